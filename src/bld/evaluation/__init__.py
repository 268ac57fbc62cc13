"""Measuring models: the figures, the feature extractors they are measured in, and reports.

    classifier.py  the small CNN trained on each dataset whose features FD is measured in
    evaluate.py    the figures (`bld.core.metrics`) of images, an autoencoder and a prior; Inception features;
                   the classifier as a checkpoint; the report

Imports bld's models, core, data and inference packages; never training or the app.
"""
