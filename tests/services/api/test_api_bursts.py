"""The REST API under load: a burst of more requests than the connection pool has connections
(the API used to deadlock on it until the pool's timeout failed every request), and a request
made while an upload is being validated (it must not wait for the validation)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from archive import db
from services import keys
from services.api import create_app
from services.config import Settings

TASK_SOURCE = (Path(__file__).parents[2] / "data" / "softmax_task.py").read_text()


def test_a_burst_larger_than_the_connection_pool_gets_no_server_error(tmp_path):
    # More requests at once than the pool has connections: each must wait its turn, not
    # take a worker thread that the requests holding connections need to finish.
    engine = sa.create_engine(db.default_url(tmp_path), pool_size=2, max_overflow=0, pool_timeout=3)
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        _, key = keys.create_key(s, "user", "alice")
        s.commit()
    app = create_app(sessions, Settings(data_dir=tmp_path, device="cpu"))

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            calls = [client.get("/api/v1/runs", headers=headers) for _ in range(120)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    try:
        assert set(asyncio.run(burst())) == {200}
    finally:
        engine.dispose()


def test_an_upload_being_validated_holds_up_no_other_request(tmp_path):
    # One connection in the pool: were the upload to hold it while its task is validated
    # (seconds), every other request would wait for it.
    engine = sa.create_engine(db.default_url(tmp_path), pool_size=1, max_overflow=0)
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        _, key = keys.create_key(s, "user", "alice")
        s.commit()
    app = create_app(sessions, Settings(data_dir=tmp_path, device="cpu"))
    slow_task = "import time\ntime.sleep(4)\n" + TASK_SOURCE
    headers = {"Authorization": f"Bearer {key}"}

    async def meanwhile() -> tuple[int, int, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            files = {"file": ("slow.py", slow_task, "text/x-python")}
            upload = asyncio.create_task(
                client.post("/api/v1/tasks", files=files, headers=headers, timeout=120)
            )
            await asyncio.sleep(1.0)  # the upload is being validated now
            t0 = time.perf_counter()
            listed = await client.get("/api/v1/tasks", headers=headers)
            waited = time.perf_counter() - t0
            return (await upload).status_code, listed.status_code, waited

    try:
        uploaded, listed, waited = asyncio.run(meanwhile())
    finally:
        engine.dispose()
    assert (uploaded, listed) == (201, 200)
    assert waited < 1.0, f"a list waited {waited:.1f} s for an upload's validation"
