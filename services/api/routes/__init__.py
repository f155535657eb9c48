"""The API's routers, one module per resource; :data:`api_router` mounts them all."""

from fastapi import APIRouter

from services.api.routes import candidates, keys, remote, runs, tasks

api_router = APIRouter()
api_router.include_router(tasks.router)
api_router.include_router(runs.router)
api_router.include_router(candidates.router)
api_router.include_router(keys.router)
api_router.include_router(remote.router)
