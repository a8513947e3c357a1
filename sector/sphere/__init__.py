"""Sphere, the compute cloud: user-defined functions run where the data lives.

Layout (STYLE.md), pure modules first:

- ``wire``: the ops, message shapes and constants the driver and the nodes share
- ``segments`` (a stream of files -> segments), ``batch`` (numpy: what a UDF receives,
  and its output split by bucket), ``udf`` (shipping a function)
- ``schedule``: which attempt runs where -- locality, pull, retries, speculation
- ``machine``: one stage's state around the scheduler -- winners, buckets, lost nodes
- ``options`` (a job's options checked), ``ports`` (what Sphere needs of its client)
- ``inputs`` (a job's input walked into files), ``cluster`` (the engines of the nodes)
- ``driver``: the client-side asyncio driver performing the machine's actions;
  ``api``: ``c.sphere.run(...)`` of the async and sync clients
- ``spe``: the processing engines, worker processes on a node
- ``terasort`` / ``tsjob``: the hello world; ``stream``: UDFs over a command's pipes

Sphere imports nothing of the client or the node: they import it.
"""
