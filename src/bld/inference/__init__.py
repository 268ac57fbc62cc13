"""Using trained models: plain functions, and the pipeline object over them.

    generate.py  encode a dataset, generate, inpaint, reconstruct (the short loops)
    pipeline.py  `BinaryLatentDiffusionPipeline`: load, sample, inpaint, blend, save
    checks.py    the pipeline's checks of what a caller passes in

Imports bld's models, core and data packages; never training (a sampling process loads no
training code), evaluation or the app. Imports nothing itself.
"""
