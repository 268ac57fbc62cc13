"""Binary Latent Diffusion (Wang et al., CVPR 2023, arXiv 2304.04820).

A binary autoencoder maps images to grids of bit vectors; a Bernoulli diffusion prior,
a transformer that predicts which bits to flip, models those bits.
"""

__version__ = "0.1.0"
