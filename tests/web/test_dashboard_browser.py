"""The dashboard in a real headless Chromium (Debian's), as a user goes through it.

The server is the real app under uvicorn with a real controller driving the runs; only the
evaluations are instant fakes (a worker's results, one per tick), so a run takes seconds and the
page's live updates can be watched. Screenshots of the main pages go to the ``screenshots``
folder (outside the repository).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

import pytest

from archive import db, repository
from archive.models import Candidate
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import JobResult
from services import keys
from services.api import create_app
from services.config import Settings
from services.runs.controller import Controller
from services.runs.seeds import check_seed
from tests.services.runs.test_controller import TEMPLATE, SlowDispatcher
from tests.web.browser import serve

#: The template family the runs search: large enough that no run here exhausts it (a second
#: run of the task would otherwise be answered from the first one's results and end at once).
FAMILY = TEMPLATE.replace(
    'SEARCH_SPACE = {"BLOCK"', f'SEARCH_SPACE = {{"UNROLL": {list(range(1, 41))}, "BLOCK"'
)
pytestmark = pytest.mark.browser

TASK = Path(__file__).parents[1] / "data" / "softmax_task.py"
#: Markup a user might type into a task name or a candidate: it must show as text, never run.
PAYLOAD = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


@dataclasses.dataclass
class Dashboard:
    url: str
    sessions: object
    alice: str
    bob: str
    admin: str


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Dashboard:
    """The app and a controller on one SQLite database; keys for alice, bob and an admin."""
    data = tmp_path_factory.mktemp("dashboard")
    engine = db.make_engine(db.default_url(data))
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    with sessions() as s:
        _, admin = keys.create_key(s, "admin", "root")
        _, alice = keys.create_key(s, "user", "alice")
        _, bob = keys.create_key(s, "user", "bob")
        s.commit()
    settings = Settings(data_dir=data, device="cpu", run_jobs_in_flight=2)
    controller = Controller(
        settings,
        sessions,
        make_dispatcher=lambda **kw: SlowDispatcher(0.15, capacity=kw["workers"]),
        # One template family (a search space), so the run's emitter breeds children of it.
        probe_templates=lambda source, device: (
            [check_seed("template:fake", FAMILY)],
            ["fake: one template"],
        ),
    )
    stop = threading.Event()
    thread = threading.Thread(target=controller.serve_forever, args=(stop,), daemon=True)
    thread.start()
    app = create_app(sessions, settings, start_run=controller.wake)
    try:
        with serve(app) as url:
            yield Dashboard(url, sessions, alice, bob, admin)
    finally:
        stop.set()
        thread.join(30)
        engine.dispose()


def sign_in(page, dash: Dashboard, key: str) -> None:
    page.goto(dash.url + "/runs")
    assert page.url.startswith(dash.url + "/login")  # no session: the sign-in form
    page.fill("#api_key", key)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(dash.url + "/runs")


def progress_of(page) -> float:
    return float(page.eval_on_selector("section.run-status progress", "e => e.value"))


def test_a_user_uploads_a_task_runs_it_and_follows_it_to_a_kernel(dashboard, page, screenshots):
    dash = dashboard
    sign_in(page, dash, dash.alice)
    screenshots.shot(page, "runs-empty")

    # Upload a task whose name is markup: it is shown as text.
    page.set_input_files("#file", str(TASK))
    page.fill("#name", "softmax " + PAYLOAD)
    page.click("form[action='/tasks/upload'] button[type=submit]")
    page.wait_for_selector("#task_id option", state="attached", timeout=60_000)
    assert PAYLOAD in page.inner_text("#task_id")

    # Start a small run from the form; its page follows it live.
    page.fill("#budget", "40")
    page.click("form[action='/runs'] button[type=submit]")
    page.wait_for_url(re.compile(re.escape(dash.url) + r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    first = progress_of(page)
    page.wait_for_function(
        f"() => document.querySelector('section.run-status progress').value > {first}",
        timeout=30_000,
    )
    screenshots.shot(page, "run-running")
    page.wait_for_function(
        "() => document.querySelector('[data-field=status]').textContent.trim() === 'finished'",
        timeout=60_000,
    )
    page.wait_for_load_state("load")  # the page reloads once the run has ended
    page.wait_for_selector("svg a[href^='/candidates/']")
    screenshots.shot(page, "run-finished")

    # Click a cell of the map holding a bred candidate: its page, its source and its parent.
    with dash.sessions() as s:
        bred = [
            e.candidate_id
            for e in repository.current_elites(s, run_id)
            if s.get(Candidate, e.candidate_id).parent_ids
        ]
    assert bred, "the run bred no elite"
    page.click(f"svg a[href='/candidates/{bred[0]}']")
    page.wait_for_url(dash.url + f"/candidates/{bred[0]}")
    assert page.locator("pre.diff .add").count() >= 1  # the diff against its parent
    assert page.locator("pre span[class]").count() > 5  # Pygments' token classes
    screenshots.shot(page, "candidate")

    page.goto(dash.url + f"/runs/{run_id}/lineage")
    assert page.locator(f"a[href='/candidates/{bred[0]}']").count() >= 1
    screenshots.shot(page, "lineage")

    # A long run: pause it, then cancel it, from its page.
    page.goto(dash.url + "/runs")
    page.fill("#budget", "5000")
    page.click("form[action='/runs'] button[type=submit]")
    page.wait_for_url(re.compile(re.escape(dash.url) + r"/runs/\d+$"))
    page.wait_for_function(
        "() => document.querySelector('[data-field=status]').textContent.trim() === 'running'",
        timeout=30_000,
    )
    page.click("button.action-pause")
    page.wait_for_selector("[data-field=status]:text-is('paused')")
    page.click("button.action-cancel")
    page.wait_for_selector("[data-field=status]:text-is('cancelled')")
    screenshots.shot(page, "run-cancelled")

    page.goto(dash.url + "/runs")
    screenshots.shot(page, "runs")
    assert page.km_dialogs == [] and page.km_console_errors == []
    assert all(u.startswith(dash.url) or u.startswith("data:") for u in page.km_requests)


def test_another_users_run_is_404_and_markup_in_a_candidate_stays_text(
    dashboard, page, screenshots
):
    dash = dashboard
    with dash.sessions() as s:
        alice = keys.valid_key(s, dash.alice).user_id
        task = repository.add_task(s, "softmax", TASK.read_text(), {}, {"ok": True})
        task.owner_id = alice
        run = repository.create_run(
            s,
            task.id,
            budget=5,
            seed=1,
            device="cpu",
            objective_label="cpu-time",
            config={"dims": "block_size,num_warps_param"},
            owner_id=alice,
        )
        run.status = "finished"
        s.commit()
        run_id = run.id
    store = RunStore(dash.sessions, run_id)
    source = TEMPLATE + f'\n# </pre><script>alert("src")</script> {PAYLOAD}\n'
    cid = store.propose(CandidateSpec(source, {"BLOCK": 256}, "hostile " + PAYLOAD)).candidate_id
    store.ingest(JobResult("job-hostile", cid, _ok()))

    sign_in(page, dash, dash.alice)
    page.goto(dash.url + f"/candidates/{cid}")
    assert 'alert("src")' in page.inner_text("body")  # shown as text ...
    assert page.km_dialogs == []  # ... and no script of it ran
    screenshots.shot(page, "candidate-hostile")

    bob = page.context.browser.new_context()
    try:
        other = bob.new_page()
        other.goto(dash.url + "/runs")
        assert "/login" in other.url  # no session there yet
        other.fill("#api_key", dash.bob)
        other.click("form[action='/login'] button[type=submit]")
        other.wait_for_url(dash.url + "/runs")
        response = other.goto(dash.url + f"/runs/{run_id}")
        assert response.status == 404 and "among yours" in other.inner_text("body")
        assert other.goto(dash.url + f"/candidates/{cid}").status == 404
    finally:
        bob.close()

    admin = page.context.browser.new_context()
    try:
        root = admin.new_page()
        root.goto(dash.url + "/login")
        root.fill("#api_key", dash.admin)
        root.click("form[action='/login'] button[type=submit]")
        root.wait_for_url(dash.url + "/runs")
        assert root.goto(dash.url + f"/runs/{run_id}").status == 200  # an admin sees it all
        assert root.goto(dash.url + "/workers").status == 200
        screenshots.shot(root, "workers")
    finally:
        admin.close()


def _ok() -> dict:
    from evolution.fakes import fake_result

    return fake_result({"BLOCK": 256}, 0.5, device="cpu")
