"""Deployment on robots: the Robot interface, the rosbridge backend (roslibpy), an optional ROS 1 backend (rospy),
the safety layer, the fixed-rate control loop, a simulated robot and episode recording. ``s2robot deploy`` is
``s2robot.ros.deploy.run``. See docs/ros.md."""
