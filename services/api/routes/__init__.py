"""The API's routers, one module per resource; :data:`api_router` mounts them all.

Modules
-------
``tasks``
    ``/tasks``: upload a task (validated in a sandboxed child), list and read yours.
``runs``
    ``/runs``: start a search, follow it, pause/resume/cancel it, browse its archive.
``llm``
    ``/llm/models``: the LLM search the server offers; ``/runs/{id}/llm/requests``: what a
    run's LLM emitter asked and what came of it, each request whole with prompt and reply.
``candidates``
    ``/candidates/{id}``: one candidate's source and newest evaluation.
``keys``
    ``/keys`` (admin): make, list and revoke API keys.
``remote``
    ``/workers``: remote workers enrol, claim jobs with leases, post results; the fleet list.
``controllers``
    ``/controllers`` (admin): the controllers sharing the database and the runs each owns.
``health``
    ``/healthz`` at the root: liveness, no key needed.
``metrics``
    ``/metrics`` at the root (admin): Prometheus text format.
"""

from fastapi import APIRouter

from services.api.routes import candidates, controllers, keys, llm, remote, runs, tasks

api_router = APIRouter()
api_router.include_router(tasks.router)
api_router.include_router(runs.router)
api_router.include_router(llm.router)
api_router.include_router(candidates.router)
api_router.include_router(keys.router)
api_router.include_router(remote.router)
api_router.include_router(controllers.router)
