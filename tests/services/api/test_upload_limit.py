"""A task file over the size limit gets one 413, whoever notices: the middleware reading the
declared ``content-length`` before the body, or the route counting the bytes of an upload that
declares no size (chunked)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from services import keys
from services.api import create_app
from services.api.app import MULTIPART_SLACK_BYTES
from services.config import Settings

LIMIT = 1000
BOUNDARY = "kernelmap-test-boundary"


@pytest.fixture
def client(sessions: sessionmaker[Session], tmp_path: Path) -> TestClient:
    with sessions() as s:
        _, key = keys.create_key(s, "user", "alice")
        s.commit()
    settings = Settings(data_dir=tmp_path / "data", device="cpu")
    client = TestClient(create_app(sessions, settings, max_task_bytes=LIMIT))
    client.headers["Authorization"] = f"Bearer {key}"
    return client


def multipart(data: bytes) -> bytes:
    return (
        (
            f"--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="task.py"\r\n'
            "Content-Type: text/x-python\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def in_chunks(body: bytes, size: int = 4096) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_declared_and_counted_oversized_uploads_get_the_same_413(client):
    type_ = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    far_over = b"#" * (LIMIT + MULTIPART_SLACK_BYTES + 1)
    declared = client.post("/api/v1/tasks", files={"file": ("task.py", far_over)})
    chunked = client.post("/api/v1/tasks", content=in_chunks(multipart(far_over)), headers=type_)
    assert "content-length" not in chunked.request.headers  # only the route can count it
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    just_over = client.post("/api/v1/tasks", files={"file": ("task.py", b"#" * (LIMIT + 1))})

    for r in (declared, chunked, just_over):
        assert r.status_code == 413, r.text
    assert declared.json() == chunked.json() == just_over.json()
    body = declared.json()
    assert body["field"] == "file"
    assert f"over {LIMIT} bytes" in body["detail"] and "reference model" in body["detail"]
