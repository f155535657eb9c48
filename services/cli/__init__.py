"""services.cli: the ``kernelmap`` command line (entry point :func:`services.cli.main.main`).

Modules
-------
``main``
    The argument parser, ``kernelmap eval`` and the dispatch to every other command.
``runs``
    The search commands: ``run``, ``runs``, ``show``, ``export``, ``db``, ``demo``, ``worker``.
``serve``
    ``serve`` (embedded or cluster), ``controller`` and the remote ``worker --join``.
``report``
    Human-readable rendering of evaluation results.

Every command turns a :class:`kernelmap_errors.KernelmapError` into one line on stderr and exit
status 2.
"""
