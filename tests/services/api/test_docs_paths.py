"""Every HTTP path README.md and docs/*.md mention is one the live app serves, and every
response field the README's REST API table promises is in that operation's response schema.

What is read as a path:

- a URL of the kernelmap server (``localhost``, ``127.0.0.1``, ``$KM``, an ``example.org``
  host), as in the ``curl`` lines: its path, concrete ids matching ``{...}`` segments;
- a backticked ``METHOD /path`` (``POST/GET /keys`` names several methods). In a table row it is
  under ``/api/v1`` unless the row says "at the root"; in prose, ``/api/v1/...`` or a root route
  as written, anything else may be either;
- a bare backticked ``/path`` in prose whose first segment is one the API uses (not a file
  path such as ``/dev/shm``): a root page, a full ``/api/v1/...`` path, or a router's prefix
  under ``/api/v1`` (``/workers``). In a table row, a bare path after a ``METHOD /path`` is a
  sibling of it (``/resume`` after ``POST /runs/{id}/pause``) or under ``/api/v1``.

Field names in the table's right-hand column are backticked lowercase identifiers; values
(statuses, verdicts) are written plain, so they are not mistaken for fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import sessionmaker

from services.api import create_app
from services.api.app import API_PREFIX
from services.config import Settings

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Pages served at the root that the OpenAPI schema does not list.
ROOT_PAGES = {"/docs", "/redoc"}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

_VERB = "(?:GET|POST|PUT|PATCH|DELETE)"
_METHOD_PATH = re.compile(rf"`({_VERB}(?:/{_VERB})*) (/[^`\s]*)`")
_BARE_PATH = re.compile(r"`(/[\w\-./{}]*)`")
_URL = re.compile(
    r"(?:https?://)?(?P<host>localhost|127\.0\.0\.1|0\.0\.0\.0|\$\{?KM\}?|[\w.-]*example\.org)"
    r"(?::\d+)?(?P<path>/[\w\-./{}]*)"
)
_FIELD = re.compile(r"`([a-z_][a-z0-9_]*)`")


def _schema() -> dict[str, Any]:
    return create_app(sessionmaker(), Settings(device="cpu")).openapi()


def _routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, through included routers (FastAPI keeps those as wrappers)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        elif hasattr(route, "routes") and not hasattr(route, "path"):
            yield from _routes(route.routes)
        else:
            yield route


def _pages() -> set[tuple[str, str]]:
    """The dashboard's pages: served at the root, kept out of the OpenAPI schema (routers
    included without a prefix: the API's, under /api/v1, are in the schema)."""
    app = create_app(sessionmaker(), Settings(device="cpu"))
    return {
        (method, route.path)
        for route in _routes(app.routes)
        if getattr(route, "include_in_schema", True) is False
        and not route.path.startswith(API_PREFIX)
        for method in getattr(route, "methods", None) or ()
        if method in METHODS
    }


class Routes:
    """What the app serves: each operation, the root pages and the OpenAPI document."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.operations = {
            (method.upper(), path): op
            for path, item in schema["paths"].items()
            for method, op in item.items()
            if method.upper() in METHODS
        }
        self.extra = {("GET", p) for p in ROOT_PAGES} | {("GET", f"{API_PREFIX}/openapi.json")}
        self.extra |= _pages()
        self._patterns = [
            (method, re.compile("^" + re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(p)) + "$"), p)
            for method, p in [*self.operations, *self.extra]
        ]

    def match(self, path: str, method: str | None = None) -> list[tuple[str, str]]:
        """The operations (method, schema path) that ``path`` names, any method if None."""
        path = path.rstrip("/.,") or "/"
        return [
            (m, p)
            for m, pattern, p in self._patterns
            if pattern.match(path) and (method is None or m == method)
        ]

    def is_prefix(self, path: str) -> bool:
        """Whether ``path`` is the prefix of some API route (a router such as ``/workers``)."""
        path = path.rstrip("/")
        return any(p.startswith(path + "/") for _, p in self.operations)

    def segments(self) -> set[str]:
        """First path segments the app uses, ``/api/v1`` stripped (``tasks``, ``docs``...)."""
        out = set()
        for _, p in [*self.operations, *self.extra]:
            rest = p.removeprefix(API_PREFIX)
            out.add(rest.strip("/").split("/")[0])
        return out | {"api"}

    def response_fields(self, ops: list[tuple[str, str]]) -> set[str]:
        """Every property name, at any depth, of the 2xx JSON responses of ``ops``, and their
        parameters' names."""
        names: set[str] = set()
        for key in ops:
            op = self.operations.get(key, {})
            names |= {p["name"] for p in op.get("parameters", [])}
            for status, response in op.get("responses", {}).items():
                if status.startswith("2"):
                    for content in response.get("content", {}).values():
                        names |= self._properties(content.get("schema", {}), set())
        return names

    def _properties(self, node: Any, seen: set[str]) -> set[str]:
        out: set[str] = set()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref and ref not in seen:
                seen.add(ref)
                target = self.schema["components"]["schemas"][ref.split("/")[-1]]
                out |= self._properties(target, seen)
            out |= set(node.get("properties", {}))
            for value in node.values():
                out |= self._properties(value, seen)
        elif isinstance(node, list):
            for value in node:
                out |= self._properties(value, seen)
        return out


def _table_cells(line: str) -> list[str] | None:
    if not line.startswith("|") or set(line) <= set("|-: "):
        return None
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _lines(text: str) -> Iterator[tuple[int, str]]:
    yield from enumerate(text.splitlines(), start=1)


def problems(name: str, text: str, routes: Routes) -> list[str]:
    """What ``text`` (a Markdown file called ``name``) says about paths or fields that the app
    does not serve; empty when every mention is right."""
    out: list[str] = []
    segments = routes.segments()
    for lineno, line in _lines(text):
        where = f"{name}:{lineno}"
        cells = _table_cells(line)
        in_table = cells is not None and len(cells) >= 2
        root_row = in_table and "at the root" in line
        for m in _URL.finditer(line):
            path = m.group("path").split("?")[0].rstrip("/.,")
            if path and path != API_PREFIX and not routes.match(path):
                out.append(f"{where}: {m.group(0)} is no route of the app")
        previous: str | None = None
        spans: list[tuple[int, int]] = []
        for m in _METHOD_PATH.finditer(line):
            spans.append(m.span())
            path = m.group(2)
            for method in m.group(1).split("/"):
                if path.startswith(API_PREFIX):
                    candidates = [path]
                elif in_table:
                    candidates = [path] if root_row else [API_PREFIX + path]
                else:
                    candidates = [path, API_PREFIX + path]
                if not any(routes.match(c, method) for c in candidates):
                    shown = " or ".join(candidates)
                    out.append(f"{where}: `{method} {path}` ({shown}) is no operation of the app")
            previous = API_PREFIX + path if in_table and not root_row else path
        for m in _BARE_PATH.finditer(line):
            if any(a <= m.start() < b for a, b in spans):
                continue
            path = m.group(1)
            first = path.strip("/").split("/")[0]
            if first not in segments or path in ("/", API_PREFIX):
                continue  # a file path, or the prefix itself
            if in_table and previous is not None:
                sibling = previous.rsplit("/", 1)[0] + path
                candidates = [sibling, API_PREFIX + path]
                if not any(routes.match(c) for c in candidates):
                    out.append(f"{where}: `{path}` (after {previous}) is no route of the app")
            elif not (routes.match(path) or routes.is_prefix(API_PREFIX + path)):
                out.append(
                    f"{where}: `{path}` is no route at the root (under /api/v1, write it whole)"
                )
        if in_table and name == "README.md":
            out += _field_problems(where, cells, root_row, routes)
    return out


def _field_problems(where: str, cells: list[str], root_row: bool, routes: Routes) -> list[str]:
    """Fields the REST table promises for a row of GET operations that their responses lack."""
    listed = _METHOD_PATH.findall(cells[0])
    if not listed or any(methods != "GET" for methods, _ in listed):
        return []
    prefix = "" if root_row else API_PREFIX
    ops = [op for _, path in listed for op in routes.match(prefix + path, "GET")]
    fields = routes.response_fields(ops)
    return [
        f"{where}: the README promises `{field}` from {', '.join(p for _, p in ops)}, whose"
        " response has no such field (field names are backticked, values are not)"
        for field in _FIELD.findall(" ".join(cells[1:]))
        if field not in fields
    ]


@pytest.fixture(scope="module")
def routes() -> Routes:
    return Routes(_schema())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_and_field_the_docs_mention_is_served(routes, doc):
    found = problems(doc.name, doc.read_text(), routes)
    assert not found, "\n".join(found)


def test_the_readme_table_documents_the_new_candidate_fields(routes):
    """The fields a newcomer looks for are where the README says (not only somewhere)."""
    candidate = routes.schema["components"]["schemas"]["CandidateDetail"]["properties"]
    evaluation = routes.schema["components"]["schemas"]["EvaluationOut"]["properties"]
    assert {"lineage", "evaluation", "parent_ids"} <= set(candidate)
    assert "verification" in evaluation
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `GET /candidates/"))
    assert "`lineage`" in row and "`verification`" in row


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        # Root routes listed as if under /api/v1, in the REST table (README before issue 13).
        ("| `GET /healthz` (no key), `GET /metrics` (admin key) | liveness |", "/api/v1/healthz"),
        ("The documentation is at `/docs` (OpenAPI at `/openapi.json`).", "`/openapi.json`"),
        ("curl localhost:8000/api/v1/healthz", "/api/v1/healthz"),
        ("admins also use `POST/GET/DELETE /keys`.", "`DELETE /keys`"),
        ("| `GET /runs/{id}/archive`, `/runs/{id}/map` | the map |", "`/runs/{id}/map`"),
        ("| `GET /candidates/{id}` | `source`, `ancestry` |", "`ancestry`"),
    ],
)
def test_the_check_catches_paths_and_fields_that_point_nowhere(routes, text, wrong):
    found = problems("README.md", text, routes)
    assert any(wrong in p for p in found), found
