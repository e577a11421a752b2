"""s2robot/encoders."""
