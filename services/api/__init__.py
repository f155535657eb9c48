"""services.api: kernelmap's REST API (FastAPI), everything under ``/api/v1``.

Modules
-------
``app``
    :func:`create_app` builds the application from a session factory and the settings.
``deps``
    What routes declare: ``SessionDep``, ``CurrentUser`` (admin or user; worker keys get
    403), ``AdminUser``, ``OwnedTask``/``OwnedRun`` (another user's id is 404), paging.
``routes``
    One router per resource: ``tasks``, ``runs``, ``candidates``, ``keys``.
``schemas``
    Request and response bodies.
``errors``
    Typed client errors and the handler turning any ``KernelmapError`` into
    ``{"detail": ...}`` with a 4xx status.
``validation``
    Validating an uploaded task in a child process with a timeout.
``launch``
    Creating a queued run from a request (seeds checked, configuration filled in).
"""

from services.api.app import create_app

__all__ = ["create_app"]
