"""The detector: RetinaNet built for one-channel radiographs, its pretrained weights, and
prediction with a run's fold models.
"""
