"""Binary Latent Diffusion (Wang et al., CVPR 2023, arXiv 2304.04820).

A binary autoencoder maps images to grids of bit vectors; a Bernoulli diffusion prior,
a transformer that predicts which bits to flip, models those bits.

``from bld import BinaryLatentDiffusionPipeline`` loads a trained run as one object.
"""

__version__ = "0.1.0"

__all__ = ["BinaryLatentDiffusionPipeline", "__version__"]


def __getattr__(name: str):
    # imported on first use, so `import bld` (and its version) stays free of torch
    if name == "BinaryLatentDiffusionPipeline":
        from .inference.pipeline import BinaryLatentDiffusionPipeline
        return BinaryLatentDiffusionPipeline
    raise AttributeError(f"module 'bld' has no attribute {name!r}")
