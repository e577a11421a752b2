"""s2robot/evaluation."""
