"""What training, inference, evaluation and the app all share, below them in the layers.

    config.py      typed configurations from YAML / dicts, presets, --set overrides, and the
                   training configurations a checkpoint carries
    device.py      the device (--device) and the precision (auto | fp32 | bf16), autocast
    checkpoint.py  one checkpoint folder: atomic writes, strict reads, RNG state
    runfolder.py   a run folder of checkpoints: the latest pointer, pruning, the lock
    loading.py     a trained autoencoder or prior from its run, and latent caches
    metrics.py     the measures: Frechet distance, precision / recall, PSNR / SSIM, bit
                   usage (pure functions of features or images)
    plots.py       image grids and loss curves (PNG)

Imports bld's models and data packages, never training, inference, evaluation or the app.
"""
