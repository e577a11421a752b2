"""Hydra configuration (package data): verb configs at top level, groups task/, policy/, encoder/, dataset/, robot/."""
