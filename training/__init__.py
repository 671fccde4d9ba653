"""Training side of qlung-edge: data sets, front end, models, losses, metrics, training loop.

The data modules (loaders, synthetic data, splits) need numpy only; torch is
imported by the modules that train.
"""
