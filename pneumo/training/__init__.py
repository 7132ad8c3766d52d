"""Training runs as directories: the config, the input pipeline, the fit, the checks that qualify a run, ensembles and
cross-fits.
"""
