"""A run in the store: ids and keys, the runs at a glance, the champion, links for people, Kaggle
submissions.
"""
