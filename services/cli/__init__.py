"""services.cli: the ``kernelmap`` command line (entry point :func:`services.cli.main.main`).

Modules
-------
``main``
    The argument parser and the dispatch to each command.
``eval``
    ``eval`` (one candidate against a task) and ``demo`` (a short search on the shipped
    example).
``runs``
    The search commands: ``run``, ``runs``, ``show`` (a run's elites), ``candidates`` (all of
    a run's candidates), ``export``.
``admin``
    Administration: ``db upgrade``, ``keys create``.
``options``
    ``--data-dir``, shared by every command that opens the data directory, and the settings
    it overrides (the flag wins over ``KERNELMAP_DATA_DIR``).
``serve``
    The service's processes: ``serve`` (embedded or cluster), ``controller``, and ``worker``
    (a Celery worker of the fleet, or with ``--join`` a remote worker).
``worker_token``
    The remote worker's enrolment token: ``--token-file``, ``KERNELMAP_WORKER_TOKEN`` or
    ``--token``.
``report``
    Human-readable output: an evaluation's result, a search's progress line.
``errors``
    :class:`errors.UsageError`, a command line that is wrong.

Every command turns a :class:`kernelmap_errors.KernelmapError` into one line on stderr and exit
status 2.
"""
