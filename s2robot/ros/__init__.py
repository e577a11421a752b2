"""s2robot/ros."""
