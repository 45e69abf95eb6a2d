"""The competition metric, out-of-fold evaluation with tuned post-processing, and Kaggle submission
files.
"""
