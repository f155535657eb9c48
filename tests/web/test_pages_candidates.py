"""The candidate, lineage, compare and workers pages over HTTP (SQLite and PostgreSQL).

A run is simulated by writing its rows through :class:`archive.RunStore`: a seed, a child that
failed, and a grandchild measured on a GPU worker with raw samples and features.
"""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from archive import leases
from archive.models import Candidate
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import JobResult
from services.api import create_app
from services.config import Settings
from services.web.highlight import pygments_css
from services.workers import fleet
from tests.fleet_fixtures import fleet_settings
from tests.services.api.test_api import SEED_SOURCE, add_run, finish_run
from tests.web.conftest import sign_in

STATIC = Path(__file__).parents[2] / "services" / "web" / "static"
FUSED_SOURCE = SEED_SOURCE.replace(
    "return torch.softmax(x, dim=-1)",
    "y = x - x.amax(-1, keepdim=True)\n        return y.softmax(-1)",
)
PAYLOAD = "</pre><script>alert(1)</script>"


def stats(median: float, samples: list[float]) -> dict:
    return {
        "median_ms": median,
        "iqr_ms": 0.02,
        "ci95_ms": [median - 0.01, median + 0.01],
        "mean_ms": median,
        "min_ms": min(samples),
        "n": len(samples),
        "samples_ms": samples,
    }


def gpu_result(params: dict) -> dict:
    return {
        "verdict": "OK",
        "correct": True,
        "speedup_vs_eager": 2.5,
        "speedup_vs_compile": 1.25,
        "timing": {
            "device": "cuda",
            "method": "cuda-events",
            "candidate": stats(0.4, [0.39, 0.4, 0.41, 0.4, 0.42]),
            "eager": stats(1.0, [0.98, 1.0, 1.01, 1.02, 0.99]),
            "compile": stats(0.5, [0.5, 0.51, 0.49, 0.5, 0.5]),
            "floor_ms": 0.1,
            "floor_basis": "bytes moved / peak bandwidth",
        },
        "features": {
            "n_regs": 40,
            "shared_bytes": 8192,
            "occupancy": 0.75,
            "kernel_count": 1,
            "tensor_cores": False,
            "floor_fraction": 0.25,
        },
        "messages": ["within tolerance"],
        "device": "cuda",
        "hardware": {"name": "NVIDIA H200"},
        "params": params,
        "worker": "kernelmap-cuda-7@gpu-node-3",
    }


@dataclasses.dataclass
class Lineage:
    run: int
    seed: int
    child: int
    grandchild: int


def make_lineage(
    site, owner_id: int, source: str = FUSED_SOURCE, params=None, label="fused", message=None
) -> Lineage:
    """seed -> child (INCORRECT) -> grandchild (measured on a GPU worker, emitter ``llm``)."""
    run = add_run(site, owner_id)
    seed, child = finish_run(site, run)
    params = params or {"BLOCK": 128}
    store = RunStore(site.sessions, run)
    grandchild = store.propose(CandidateSpec(source, params, "llm", (child,), label))
    result = gpu_result(params)
    if message:
        result["messages"] = [message]
    store.ingest(JobResult("job-3", grandchild.candidate_id, result))
    return Lineage(run, seed, child, grandchild.candidate_id)


class LinkDepths(HTMLParser):
    """Nesting depth (open ``<ul>``) of each ``/candidates/ID`` link inside ``.tree``."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.in_tree = False
        self.depths: dict[int, int] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "tree":
            self.in_tree = True
        if tag == "ul" and self.in_tree:
            self.depth += 1
        href = attrs.get("href") or ""
        if tag == "a" and self.in_tree and href.startswith("/candidates/"):
            self.depths[int(href.rsplit("/", 1)[1])] = self.depth

    def handle_endtag(self, tag):
        if tag == "ul" and self.in_tree:
            self.depth -= 1


# -- the candidate page ------------------------------------------------------------------------


def test_candidate_page_shows_source_evidence_diff_and_lineage(site):
    ids = make_lineage(site, site.alice_id)
    alice = sign_in(site, site.alice)
    r = alice.get(f"/candidates/{ids.grandchild}")
    assert r.status_code == 200, r.text
    page = r.text
    assert f'href="{"/static/web"}/code.css"' in page
    # Highlighted source, parameters baked in.
    assert '<pre class="hl">' in page
    assert '<span class="kn">import</span>' in page and '<span class="k">class</span>' in page
    assert (
        '<span class="n">BLOCK</span> <span class="o">=</span> <span class="mi">128</span>' in page
    )
    # Evaluation, timing, samples plot, floor, features.
    assert "within tolerance" in page and "OK" in page
    assert "0.4 ms" in page and "0.39 – 0.41 ms" in page
    assert '<svg class="samples"' in page and page.count("<circle") == 15
    assert "0.1 ms" in page and "25.0%" in page  # the floor and the fraction of it
    for feature in ("n_regs", "shared_bytes", "occupancy", "kernel_count", "tensor_cores"):
        assert f"<th>{feature}</th>" in page
    # Who measured it, and whether that is verified.
    assert "kernelmap-cuda-7@gpu-node-3" in page and "NVIDIA H200" in page
    assert "trusted: measured by a worker kernelmap controls" in page
    # The diff against its first parent, with a link to compare.
    assert '<pre class="diff">' in page
    assert re.search(r'<span class="add">\+\s+y = x - x\.amax', page)
    assert re.search(r'<span class="del">-\s+return torch\.softmax', page)
    assert '<span class="hunk">@@' in page
    assert f"/runs/{ids.run}/compare?a={ids.child}&amp;b={ids.grandchild}" in page
    # Lineage: seed first, each step with its emitter; the run's page.
    lineage = page[page.index('<ol class="lineage">') :]
    assert lineage.index(f'href="/candidates/{ids.seed}"') < lineage.index(
        f'href="/candidates/{ids.child}"'
    )
    assert '<span class="emitter">params</span>' in lineage
    assert '<span class="emitter">llm</span>' in page
    assert f'href="/runs/{ids.run}"' in page


def test_a_seed_has_no_parent_and_lists_its_children(site):
    ids = make_lineage(site, site.alice_id)
    page = sign_in(site, site.alice).get(f"/candidates/{ids.seed}").text
    assert "A seed: no parent." in page
    children = page[page.index('<ul class="children">') :]
    assert f'href="/candidates/{ids.child}"' in children
    assert f'href="/candidates/{ids.grandchild}"' not in children  # a grandchild, not a child
    # The INCORRECT child: its verdict and message, no timing.
    page = sign_in(site, site.alice).get(f"/candidates/{ids.child}").text
    assert "INCORRECT" in page and "max abs error 3.0" in page
    assert "No timing" in page


def test_untrusted_source_params_and_messages_render_as_text(site):
    source = SEED_SOURCE + f"# {PAYLOAD}\n"
    evil = {"BLOCK": "<img src=x onerror=alert(2)>"}
    label, message = "<script>alert(3)</script>", "<script>alert(4)</script>"
    ids = make_lineage(site, site.alice_id, source, evil, label=label, message=message)
    client = sign_in(site, site.alice)
    for path in (
        f"/candidates/{ids.grandchild}",
        f"/runs/{ids.run}/compare?a={ids.seed}&b={ids.grandchild}",
        f"/runs/{ids.run}/lineage",
    ):
        page = client.get(path).text
        assert "<script>alert(" not in page, path
        assert "<img src=x" not in page, path
    page = client.get(f"/candidates/{ids.grandchild}").text
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page  # in source and diff
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;script&gt;alert(3)" in page and "&lt;script&gt;alert(4)" in page


def test_a_source_that_does_not_parse_is_shown_as_stored(site):
    run = add_run(site, site.alice_id)
    store = RunStore(site.sessions, run)
    broken = store.propose(CandidateSpec(f"def broken(:\n    {PAYLOAD}\n", {"BLOCK": 1}, "llm"))
    page = sign_in(site, site.alice).get(f"/candidates/{broken.candidate_id}").text
    assert "The source does not parse" in page and "Not evaluated yet." in page
    assert "<script>alert(" not in page
    code = page[page.index('<pre class="hl">') :]
    text = re.sub(r"<span[^>]*>|</span>", "", code[: code.index("</pre>")])
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in text  # as text, tokens apart


def test_another_users_candidate_is_404_and_the_admin_sees_it(site):
    ids = make_lineage(site, site.bob_id)
    alice = sign_in(site, site.alice)
    for path in (
        f"/candidates/{ids.grandchild}",
        f"/runs/{ids.run}/lineage",
        f"/runs/{ids.run}/compare?a={ids.seed}&b={ids.child}",
    ):
        r = alice.get(path)
        assert r.status_code == 404, path
        assert "fused" not in r.text and "kernelmap-cuda-7" not in r.text
        assert sign_in(site, site.admin).get(path).status_code == 200, path
    assert alice.get("/candidates/999999").status_code == 404
    assert alice.get("/candidates/nonsense").status_code == 404


def test_a_duplicate_in_your_run_shows_your_run_and_not_the_other_users_parent(site):
    bob = make_lineage(site, site.bob_id)
    with site.sessions() as s:
        task_id = s.get(Candidate, bob.seed).task_id
    mine = add_run(site, site.alice_id, task_id)
    store = RunStore(site.sessions, mine)
    again = store.propose(CandidateSpec(FUSED_SOURCE, {"BLOCK": 128}, "llm", (), "mine"))
    assert again.duplicate and again.candidate_id == bob.grandchild
    alice = sign_in(site, site.alice)
    page = alice.get(f"/candidates/{bob.grandchild}").text
    assert f'href="/runs/{mine}"' in page and f'href="/runs/{bob.run}"' not in page
    assert f"Its parent #{bob.child} is not among your candidates." in page
    assert '<pre class="diff">' not in page and "return torch.softmax" not in page
    tree = alice.get(f"/runs/{mine}/lineage").text  # its first parent is outside this run
    assert f'from <a href="/candidates/{bob.child}">#{bob.child}</a>' in tree


def test_pages_without_a_session_go_to_login(site):
    ids = make_lineage(site, site.alice_id)
    client = TestClient(site.client.app)
    for path in (f"/candidates/{ids.seed}", f"/runs/{ids.run}/lineage", "/workers"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path


def test_code_css_holds_the_current_pygments_rules():
    assert pygments_css() in (STATIC / "code.css").read_text()


# -- lineage and compare -----------------------------------------------------------------------


def test_lineage_page_nests_descendants_under_their_seed(site):
    ids = make_lineage(site, site.alice_id)
    r = sign_in(site, site.alice).get(f"/runs/{ids.run}/lineage")
    assert r.status_code == 200
    parser = LinkDepths()
    parser.feed(r.text)
    depths = parser.depths
    assert depths[ids.child] == depths[ids.seed] + 1
    assert depths[ids.grandchild] == depths[ids.seed] + 2
    assert "3 candidates, 1 at the top" in r.text
    assert "1.25x" in r.text and "gpu-speedup" in r.text  # over the better baseline, labelled
    assert "INCORRECT" in r.text and "left out" not in r.text


def test_lineage_tree_caps_the_nodes_it_renders():
    from services.web.pages.candidates import lineage_tree

    @dataclasses.dataclass
    class Row:
        id: int
        parent_ids: list[int]
        emitter: str = "params"
        label: str = ""
        verdict: str | None = None
        objective: float | None = None
        objective_label: str | None = None

    rows = [Row(1, [])] + [Row(i, [i - 1]) for i in range(2, 301)]  # one chain, 300 deep
    tree = lineage_tree(rows, max_nodes=120)
    assert (tree.shown, tree.total, tree.seeds) == (120, 300, 1)
    kinds = [k for k, _ in tree.tokens]
    assert kinds.count("ul") == kinds.count("/ul") and kinds.count("li") == kinds.count("/li")
    flat = [n for k, n in tree.tokens if k == "li" and n.parent_note is not None]
    assert flat and flat[0].parent_note == flat[0].row.id - 1  # too deep: listed flat, named


def test_compare_shows_the_diff_and_both_metrics(site):
    ids = make_lineage(site, site.alice_id)
    r = sign_in(site, site.alice).get(f"/runs/{ids.run}/compare?a={ids.seed}&b={ids.grandchild}")
    assert r.status_code == 200, r.text
    page = r.text
    assert '<span class="add">' in page and '<span class="del">' in page
    assert "2x (cpu-time)" in page and "1.25x (gpu-speedup)" in page
    assert "2.5x" in page and "0.4 ms" in page and "<th>n_regs</th>" in page
    assert "<th>param BLOCK</th>" in page
    assert f"compare?a={ids.grandchild}&amp;b={ids.seed}" in page  # swap


def test_compare_with_bad_ids_is_a_422_page(site):
    ids = make_lineage(site, site.alice_id)
    other = make_lineage(site, site.alice_id, source=SEED_SOURCE + "# other\n")
    client = sign_in(site, site.alice)
    base = f"/runs/{ids.run}/compare"
    for query, why in (
        (f"?a={ids.seed}", "b is missing"),
        ("", "a is missing"),
        (f"?a=abc&b={ids.seed}", "a is not a candidate id"),
        (f"?a={ids.seed}&b=-3", "b is not a candidate id"),
        (f"?a={ids.seed}&b={other.grandchild}", f"no candidate {other.grandchild} in run"),
    ):
        r = client.get(base + query)
        assert r.status_code == 422, query
        assert why in r.text, query
        assert "text/html" in r.headers["content-type"]


# -- workers -----------------------------------------------------------------------------------


def test_workers_page_is_for_admins(site):
    assert sign_in(site, site.alice).get("/workers").status_code == 403
    with site.sessions() as s:
        hw = {"hostname": "gpu-box", "gpu_name": "NVIDIA H200", "sandbox": {"level": "strict"}}
        leases.enrol_worker(s, None, "far-away", "cuda", hw)
        s.commit()
    r = sign_in(site, site.admin).get("/workers")
    assert r.status_code == 200
    assert "No live Celery workers" in r.text and "No Redis is configured" in r.text
    remote = r.text[r.text.index('<table class="remote">') :]
    assert "far-away" in remote and "NVIDIA H200" in remote and "strict" in remote


def test_workers_page_says_when_redis_does_not_answer(site, tmp_path):
    settings = Settings(data_dir=tmp_path / "d2", device="cpu", redis_url="redis://127.0.0.1:9/0")
    app = create_app(site.sessions, settings, start_run=lambda run_id: None)
    down = dataclasses.replace(site, client=TestClient(app))
    r = sign_in(down, site.admin).get("/workers")
    assert r.status_code == 200
    assert "Redis did not answer" in r.text


@pytest.mark.redis
def test_workers_page_lists_live_celery_workers_and_queue_depths(site, env, tmp_path):
    settings = fleet_settings(env)
    hw = {"hostname": "box", "gpu_name": "NVIDIA H200", "sandbox": {"level": "relaxed"}}
    beat = fleet.Heartbeat(settings, "kernelmap-cuda-1@box", "cuda", hw)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert beat.beat()
        client.lpush(f"{settings.redis_key_prefix}eval.cuda", b"{}")
        app = create_app(site.sessions, settings, start_run=lambda run_id: None)
        live = dataclasses.replace(site, client=TestClient(app))
        page = sign_in(live, site.admin).get("/workers").text
    finally:
        beat.stop()
        client.close()
    celery = page[page.index('<table class="celery">') : page.index("Remote workers")]
    assert "kernelmap-cuda-1@box" in celery and "NVIDIA H200" in celery
    assert 'class="sandbox sandbox-relaxed"' in celery
    assert re.search(r"<code>eval\.cuda</code></td><td class=\"num\">1</td>", page)
