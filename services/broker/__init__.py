"""services.broker: the message broker of embedded mode.

Modules
-------
``redis_server``
    :class:`EmbeddedRedis`: a private ``redis-server`` on a unix socket in the data directory,
    started and stopped by ``kernelmap serve`` when ``KERNELMAP_REDIS_URL`` is not set, and
    :func:`redis_py_url` (kombu and redis-py spell socket URLs differently).

In a cluster the broker is an ordinary Redis the operator runs (docs/cluster.md).
"""
