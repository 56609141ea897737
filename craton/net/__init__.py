"""Craton's production node: ``craton-server`` and what it is made of.

``config`` (the ``VDB_*`` variables), ``node`` (the replica, its event store and the driver
on real files under asyncio), ``peers`` (connections to the other replicas of a cluster),
``connection`` (one binary-protocol client connection), ``server`` (the listeners, limits
and shutdown), ``probes`` (``/health``, ``/ready``, ``/metrics``), ``metrics``, ``logs``
and ``server_main`` (the entry point). This package builds on ``craton.core`` and
``craton.io`` and never imports ``craton.sim``.
"""
