"""services.runs: a run from its task to its archive, and reading it back.

A run is one MAP-Elites search over candidate kernels for one task. ``kernelmap run`` drives
one in its own process; through the API a run is queued and the controller drives it.

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
    The run's stored configuration and the label of its objective.
``search``
    Wiring the search core (:mod:`evolution`) to the database (:mod:`archive`) and a
    dispatcher (:mod:`services.dispatch`); ``kernelmap run``.
``controller``
    The service's controller: starts, resumes, pauses and cancels the API's runs.
``views``, ``html_report``
    A run read back from the database: summaries, tables, exports, the HTML report.
"""
