"""services.api: kernelmap's REST API (FastAPI), everything under ``/api/v1``.

Modules
-------
``app``
    :func:`create_app` builds the application from a session factory and the settings.
``deps``
    What routes declare: ``SessionDep``, ``CurrentUser`` (admin or user; worker keys get
    403), ``AdminUser``, ``BriefUser``, ``OwnedTask``/``OwnedRun`` (another user's id is 404),
    ``CurrentWorker`` (a remote worker's own token), paging.
``errors``
    Typed client errors and the handler turning any ``KernelmapError`` into
    ``{"detail": ...}`` with a 4xx status.
``schemas``
    Request and response bodies (tasks, runs, candidates, keys) and the shared field types.
``schemas_workers``
    Request and response bodies of ``/workers`` (enrolment, claims, results, the fleet list).
``validation``
    Validating an uploaded task in a child process with a timeout.
``launch``
    Creating a queued run from a request (seeds checked, configuration filled in).

Routes (``routes/``, one router per resource, mounted by ``routes.api_router``)
-------------------------------------------------------------------------------
``routes.tasks``
    ``/tasks``: upload a task (validated in a sandboxed child), list and read yours.
``routes.runs``
    ``/runs``: start a search, follow it, pause/resume/cancel it, browse its archive.
``routes.candidates``
    ``/candidates/{id}``: one candidate's source, newest evaluation (with its verification)
    and lineage.
``routes.keys``
    ``/keys`` (admin): make, list and revoke API keys.
``routes.remote``
    ``/workers``: remote workers enrol, claim jobs with leases, post results; the fleet list.
``routes.health``
    ``/healthz`` at the root: liveness, no key needed.
``routes.metrics``
    ``/metrics`` at the root (admin): Prometheus text format.
"""

from services.api.app import create_app

__all__ = ["create_app"]
