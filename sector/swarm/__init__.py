"""Swarm distribution (issue 14), the pure part: the tracker's decisions
(``tracker``), a fetch's piece schedule (``schedule``) and the swarm's messages
(``messages``). The drivers live in ``sector/node/`` (``swarm``, ``swarm_fetch``,
``cache``); the piece lists themselves in ``sector/storage/pieces``."""
