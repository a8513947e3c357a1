"""Disco's classic worker on Sector: the per-record job functions (``func``), how a
job's settings are resolved and a task is run (``worker``), and the Sphere UDFs that
run the tasks on the nodes (``tasks``)."""
