"""ROS transports for deployment: the rosbridge backend (roslibpy), an optional ROS 1 backend (rospy), ROS message
conversion, the robot description (topics, message types) and the pre-flight check. ``s2robot deploy`` is
``s2robot.ros.deploy.run``. The transport-independent parts (Robot interface, safety layer, control loop, simulated
robot, episode recording) are in :mod:`s2robot.deploy`. See docs/ros.md."""
