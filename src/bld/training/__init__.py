"""The parts of the one training loop (`bld.training.loop`), and one task per model.

    context.py     the process: device, precision, torch.distributed, rank 0's lock
    batches.py     the training set a DataConfig names and each step's batch of it
    accumulate.py  gradient accumulation: micro-batches, DDP's gradient sync, loss means
    optim.py       AdamW, the lr schedule, the EMA of the weights, the non-finite guard
    resume.py      starting a run: the lock, the refusal rules, restoring a checkpoint
    task.py        `Task`: what the loop asks of a model (its data, model, loss, snapshot)
    autoencoder.py `AutoencoderTask`: the binary autoencoder, its GAN and both optimizers
    prior.py       `PriorTask`: the Bernoulli diffusion prior on binary latents

The loop itself, the metrics rows and the checkpoint writes are in `bld.training.loop`. Nothing in
this package imports `bld.training.loop`; the loop takes a task as its argument. Imports nothing
itself, so that importing one module of the package loads only what that module needs.
"""
