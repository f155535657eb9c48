"""services.runs: a run from its task to its archive, and reading it back.

A run is one MAP-Elites search over candidate kernels for one task. ``kernelmap run`` drives
one in its own process; through the API a run is queued and one of the controllers sharing the
database drives it. Either way the driver holds the run's lease while it searches.

Modules
-------
``task_validation``, ``json_child``
    The task's code runs only in a sandboxed child that answers with one JSON line; these
    validate an uploaded or local task there.
``seeds``
    Seed candidates, checked before anything starts.
``template_probe``
    Which template families match the task (matched in a sandboxed child); their candidates
    become seeds.
``config``
    :class:`config.RunConfig`, the run's stored configuration (JSON in ``runs.config``, every
    default in one place), and the label of its objective.
``wiring``
    A run's parts: its map, its emitters and its dispatcher
    (:func:`wiring.make_dispatcher`: the local pool, the Celery queue or the controller's
    fleet, see :mod:`services.dispatch`).
``llm_setup``
    LLM search in a run: its stored options checked against the server's endpoint
    (:class:`llm_setup.LlmOptions`), and the emitter, pool and log a search builds.
``search``
    The search loop (:mod:`evolution`) over the database (:mod:`archive`) and a dispatcher:
    starting, resuming and stopping a run; ``kernelmap run``.
``ownership``
    :class:`ownership.RunOwnership`: taking, renewing and releasing a run's lease, and the
    fence its store writes through (:mod:`archive.run_leases`).
``controller``
    The service's controllers: each takes free runs up to its limits, resumes those whose
    owner died, stops paused and cancelled ones, and stops a run whose lease it lost.
``views``, ``html_report``
    A run read back from the database: summaries, tables, exports, the HTML report.
"""
