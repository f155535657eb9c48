"""The dashboard's pages, one router per family, gathered in :data:`page_router`.

Modules
-------
``common``
    What every page shares: the 404 page for ids the user may not see.
``runs``
    ``/runs`` (the user's runs, live; upload a task, start a run), ``/runs/{id}`` (the map,
    curves, verdicts, baselines, the best kernel; pause, resume, cancel).
``candidates``
    ``/candidates/{id}`` (source, evaluation, timing, features, verification, diff against its
    parent, lineage), ``/runs/{id}/lineage`` and ``/runs/{id}/compare``.
``workers``
    ``/workers`` (admin): the fleet, its heartbeats, sandbox levels and queue depths.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.web.pages import candidates, runs, workers

page_router = APIRouter(include_in_schema=False)
for _family in (runs, candidates, workers):
    page_router.include_router(_family.router)
