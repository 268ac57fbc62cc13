"""The models and the mathematics of the method; nothing here reads files, trains or samples
for a user. Imports no bld module outside this package.

    autoencoder.py  the binary autoencoder: Bernoulli bits with straight-through gradients,
                    its losses and the optional patch discriminator
    diffusion.py    Bernoulli diffusion: the noise schedule, q(z_t | z_0), the flip
                    parameterisation, the posterior and the training loss
    denoiser.py     the transformer that predicts, per bit, the chance it must flip
    sampling.py     the few-step sampler: guided, inpainting, with its trajectory
    packing.py      latents packed 8 bits to a byte (latent caches) and back

See docs/method.md for the equations and the function that implements each.
"""
