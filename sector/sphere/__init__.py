"""Sphere, the compute cloud: user-defined functions run where the data lives.

Layout (STYLE.md): ``segments`` (pure: a stream of files -> segments), ``batch`` (pure,
numpy: what a UDF receives, and its output split by bucket), ``schedule`` (pure: the
job's state machine -- locality, pull, retries, speculation), ``spe`` (the processing
engines: worker processes on a node), ``driver`` (the client-side job driver),
``terasort`` (the hello world).
"""
