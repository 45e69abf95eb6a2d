"""One fold's training: the epoch loop, validation, checkpoints and resume."""
