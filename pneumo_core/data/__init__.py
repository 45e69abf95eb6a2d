"""The competition's data: the Kaggle archive into the store, DICOMs, labels, folds, the prepared
cache, training datasets and augmentation, and the synthetic stand-in.
"""
