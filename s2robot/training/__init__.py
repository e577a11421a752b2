"""s2robot/training."""
