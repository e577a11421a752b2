"""Deployment without ROS: the ``Robot`` interface, what an action means and its limits, the safety layer, the
fixed-rate control loop, a simulated robot (MuJoCo) and episode recording. The ROS transports that implement
``Robot`` are in :mod:`s2robot.ros`. See docs/ros.md."""
