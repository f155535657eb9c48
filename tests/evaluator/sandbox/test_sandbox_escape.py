"""The OS sandbox against escapes (issue 10): hostile candidates and tasks, evaluated with the
static gate off, so the sandbox has to hold by itself (and, with the gate on, they are still
harmless).

Each case gets a harmless verdict and checks that nothing was written, read or leaked: writes
outside the private directory through many file APIs, host files and directory listings and the
worker's environment handed back in error messages, data carried from one candidate to the next
(and a candidate's process outliving its evaluation), signals and traces aimed at the judge, other
processes seen through /proc, and hostile task files doing the same from the reference model.
The candidates and tasks are templates under tests/corpus (``escape_*``): the test substitutes
what only exists at test time (a host directory, the judge's pid, a marker). A hostile file
reports what it found as ``ESCAPE[key=value|...]`` in an exception; every such report is parsed,
so a cut or missing report fails rather than passes.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluator_worker import fsview
from evaluator_worker.config import EvalConfig
from evaluator_worker.errors import TaskError
from evaluator_worker.judge import Evaluator
from evaluator_worker.result import EvalResult

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "corpus"
SOFTMAX_TASK = CORPUS / "tasks" / "softmax.py"
HONEST = CORPUS / "candidates" / "softmax_torch.py"

#: This run's marker: in every file name a hostile candidate tries to create on the host.
MARKER = uuid.uuid4().hex[:12]
#: The worker's secrets, set in the environment before the evaluators (and their zygotes) start.
ENV_SECRETS = {
    "KERNELMAP_DATABASE_URL": f"postgresql://kernelmap:pw{uuid.uuid4().hex}@db.internal/kernelmap",
    "KERNELMAP_API_KEY": f"km-{uuid.uuid4().hex}",
    "KERNELMAP_BROKER_URL": f"redis://:pw{uuid.uuid4().hex}@broker.internal:6379/0",
    "AWS_SECRET_ACCESS_KEY": f"aws{uuid.uuid4().hex}",
}
#: What a host directory holds: a file whose name and content a candidate cannot guess.
SECRET_CONTENT = f"secret-content-{uuid.uuid4().hex}"
SECRET_NAME = f"secret-name-{uuid.uuid4().hex}"
HOST_NAME = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else ""
HOST_PASSWD = Path("/etc/passwd").read_text().splitlines()[0]
HARMLESS = {"STATIC_REJECT", "LOAD_ERROR", "RUNTIME_ERROR", "INCORRECT", "OK"}
#: The writes that the write candidate tries (its WRITERS).
WRITE_APIS = [
    "open", "pathlib", "os", "numpy", "torch", "from_file", "shutil", "mkdir", "sqlite", "symlink",
    "hardlink",
]  # fmt: skip


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secret_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV_SECRETS.items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def ev(secret_env: None) -> Iterator[Evaluator]:
    """One evaluator for every case, as a worker has (the gate off: the sandbox alone holds)."""
    with Evaluator(EvalConfig(device="cpu", static_gate=False, timeout_s=60)) as e:
        yield e


@pytest.fixture(scope="module")
def ev_gated(secret_env: None) -> Iterator[Evaluator]:
    with Evaluator(EvalConfig(device="cpu", static_gate=True, timeout_s=60)) as e:
        yield e


@pytest.fixture(scope="module")
def task_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The softmax task, copied where a write that got through would harm nothing."""
    path = tmp_path_factory.mktemp("task") / "softmax.py"
    shutil.copy(SOFTMAX_TASK, path)
    return path


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    """Remove whatever a leaking sandbox let through to the host's /tmp and /dev/shm."""
    yield
    for path in _escaped():
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


class Host:
    """A host directory (with a secret) and a directory for the rendered candidates."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "host"
        self.dir.mkdir()
        (self.dir / "known.txt").write_text(SECRET_CONTENT)
        (self.dir / SECRET_NAME).write_text("x")
        self.cands = base / "cands"
        self.cands.mkdir()
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, list[str]]:
        return {str(d): sorted(os.listdir(d)) for d in (self.dir, self.cands)}

    def render(self, template: str, kind: str = "candidates", **subs: object) -> Path:
        """The template ``tests/corpus/<kind>/<template>.py`` with ``__KEY__`` substituted."""
        text = (CORPUS / kind / f"{template}.py").read_text()
        subs = {"HOST_DIR": self.dir, "MARKER": MARKER, **subs}
        for key, value in subs.items():
            text = text.replace(f"__{key}__", str(value))
        left = re.findall(r"__[A-Z_]+__", text.replace("__file__", "").replace("__init__", ""))
        assert not left, f"{template}: placeholders left unsubstituted: {left}"
        out = self.cands / f"{template}_{len(os.listdir(self.cands))}.py"
        out.write_text(text)
        self.before = self.snapshot()
        return out


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


# -- checks -----------------------------------------------------------------------------------
def _escaped() -> list[str]:
    """Files this run's hostile code managed to create in the host's /tmp and /dev/shm."""
    return sorted(
        glob.glob(f"/tmp/kernelmap-escape-{MARKER}*")
        + glob.glob(f"/dev/shm/kernelmap-escape-{MARKER}*")
    )


def _secrets() -> dict[str, str]:
    found = {f"environment {k}": v for k, v in ENV_SECRETS.items()}
    found.update({f"secret part of {k}": v.split("pw")[-1] for k, v in ENV_SECRETS.items()})
    found.update({"host file content": SECRET_CONTENT, "host file name": SECRET_NAME})
    found["host /etc/passwd"] = HOST_PASSWD
    return found


def _text(res: EvalResult | str) -> str:
    return res if isinstance(res, str) else json.dumps(res.to_dict())


def assert_clean(res: EvalResult | str, host: Host | None) -> None:
    """Nothing of the host reached the result, nothing was written to it."""
    text = _text(res)
    leaked = [name for name, value in _secrets().items() if value and value in text]
    assert not leaked, f"leaked {leaked} into the result: {text[:3000]}"
    assert not _escaped(), f"written on the host: {_escaped()}"
    if host is not None:
        assert host.snapshot() == host.before, "a file appeared in a host directory"


def report(res: EvalResult | str) -> dict[str, str]:
    """The hostile code's ``ESCAPE[...]`` report, which must have come back whole."""
    text = res if isinstance(res, str) else " ".join(res.messages)
    m = re.search(r"ESCAPE\[([^\]]*)\]", text)
    assert m, f"no complete ESCAPE[...] report (missing or cut) in: {text}"
    return dict(item.partition("=")[::2] for item in m.group(1).split("|"))


def failed(value: str) -> bool:
    """A probe's outcome says the operation failed (an errno or an exception type)."""
    return value != "ok" and bool(re.fullmatch(r"E\d+|[A-Za-z]*(Error|Exception)", value))


def verdict(res: EvalResult) -> str:
    return res.verdict.value


def _allowed_children(directory: str, shown: list[Path]) -> set[str]:
    """What the private root may hold in ``directory``: the next component of what it binds."""
    paths = fsview.read_only_paths([]) + [str(p.resolve()) for p in shown]
    prefix = directory.rstrip("/") + "/"
    return {p[len(prefix) :].split("/")[0] for p in paths if p.startswith(prefix)}


def _listing(value: str) -> set[str]:
    assert not failed(value), f"could not list: {value}"
    return set() if value == "-" else set(value.split(","))


# -- 1. writes outside the private directory --------------------------------------------------
@pytest.mark.parametrize("api", WRITE_APIS)
def test_writes_do_not_reach_the_host(ev: Evaluator, task_copy: Path, host: Host, api: str):
    task_text = task_copy.read_text()
    cand = host.render("escape_write", API=api, MODE="report", TASK=task_copy)
    cand_text = cand.read_text()
    res = ev.evaluate(task_copy, cand)
    assert verdict(res) == "LOAD_ERROR", res.messages
    r = report(res)
    if api != "hardlink":  # a hard link cannot cross into the private tmpfs: EXDEV
        # The API works: in the sandbox's own, private /tmp and /dev/shm.
        assert r["tmp"] == "ok" and r["shm"] == "ok", r
    for where in ("host", "here", "self", "task", "jobtask"):
        if where in r:
            assert failed(r[where]), f"{api} wrote to {where}: {r}"
    assert cand.read_text() == cand_text, "the candidate rewrote its own file"
    assert task_copy.read_text() == task_text, "the candidate rewrote the task file"
    assert_clean(res, host)


def test_silent_writes_leave_nothing(ev: Evaluator, task_copy: Path, host: Host):
    """Every API at once, failures swallowed, and a correct softmax: OK, and still nothing."""
    task_text = task_copy.read_text()
    cand = host.render("escape_write", API="all", MODE="silent", TASK=task_copy)
    res = ev.evaluate(task_copy, cand)
    assert verdict(res) == "OK", res.messages
    assert task_copy.read_text() == task_text
    assert_clean(res, host)


# -- 2. host files and directory listings in an error message ---------------------------------
@pytest.fixture(scope="module")
def read_result(
    ev: Evaluator, task_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EvalResult, Host]:
    host = Host(tmp_path_factory.mktemp("read"))
    res = ev.evaluate(task_copy, host.render("escape_read"))
    return res, host


def test_host_files_do_not_leak(read_result: tuple[EvalResult, Host]):
    res, host = read_result
    assert verdict(res) == "RUNTIME_ERROR", res.messages
    r = report(res)
    assert r["passwd"].startswith("sandbox:x:"), r  # the sandbox's own passwd, not the host's
    assert r["hostname"] == "sandbox", r
    for key in ("shadow", "osrel", "secret"):
        assert failed(r[key]), f"{key} was readable: {r}"
    assert r["dirfds"] == "none", f"a descriptor of a host directory is open: {r}"
    for fd in r["fds"].split(","):
        num, _, target = fd.partition(">")
        # /dev/null, the channel, and the capture file (unlinked): nothing else of the host.
        ok = target == "/dev/null" or target.endswith("(deleted)")
        assert ok or target.startswith(("socket:", "pipe:", "anon_inode:")), f"fd {num}: {target}"
    assert_clean(res, host)


def test_host_name_does_not_leak(read_result: tuple[EvalResult, Host]):
    """The UTS namespace is the child's own; its name must not be the host's either."""
    res, _ = read_result
    r = report(res)
    assert HOST_NAME, "the host has no /etc/hostname to compare with"
    for key in ("hostname", "uname", "kernhost"):
        assert r[key] != HOST_NAME, f"{key} is the host's name {HOST_NAME!r}: {r}"


#: Directories listed from inside, in two groups (a report must fit in one error message).
LISTED = {
    "system": {
        "root": "/", "etc": "/etc", "rootdir": "/root", "home": "/home", "work": "/work",
        "repo": str(ROOT), "dev": "/dev",
    },
    "private": {
        "hostdir": "@host", "own": "@here", "parent": "@here/..", "grand": "@here/../..",
        "tmp": "/tmp", "shm": "/dev/shm",
    },
}  # fmt: skip
#: What the sandbox itself adds to a directory, beyond the paths it binds.
SANDBOX_ADDS = {
    "/": {"proc", "dev", "etc", "home", "tmp"},
    "/etc": {"passwd", "group", "hostname"},
    "/home": {"sandbox"},
    "/dev": {*fsview.DEVICES, "fd", "stdin", "stdout", "stderr", "shm"},
}


@pytest.mark.parametrize("group", sorted(LISTED))
def test_host_directories_do_not_leak(ev: Evaluator, task_copy: Path, host: Host, group: str):
    dirs = {k: v.replace("@host", str(host.dir)) for k, v in LISTED[group].items()}
    cand = host.render("escape_list", DIRS=";".join(f"{k}={v}" for k, v in dirs.items()))
    res = ev.evaluate(task_copy, cand)
    assert verdict(res) == "LOAD_ERROR", res.messages
    r = report(res)
    if group == "private":
        assert failed(r["hostdir"]), f"the host directory is visible: {r['hostdir']}"
        here = Path(r["herepath"])  # the judge's copy of the job's files, bound read-only
        assert _listing(r["own"]) == {"candidate.py", "task.py"}, r
        # Other children's directories, the judge's own files: none of them.
        assert _listing(r["parent"]) == {here.name}, f"{here.parent} shows {r['parent']}"
        assert _listing(r["grand"]) == {here.parent.name}, f"{here.parent.parent}: {r['grand']}"
        for key in ("tmp", "shm"):  # private: the host's entries only on the way to the job
            seen = _listing(r[key]) - _allowed_children(dirs[key], [here])
            assert not seen & set(os.listdir(dirs[key])), f"{dirs[key]} is the host's: {r[key]}"
        assert_clean(res, host)
        return
    for key, path in dirs.items():
        if failed(r[key]) and not _allowed_children(path, []):
            continue  # not in the private root at all
        seen = _listing(r[key])
        allowed = _allowed_children(path, []) | SANDBOX_ADDS.get(path, set())
        assert seen <= allowed, f"{path} shows {sorted(seen - allowed)} of the host"
        assert seen != set(os.listdir(path)) or seen == allowed
    assert_clean(res, host)


# -- 3. the worker's environment in an error message ------------------------------------------
def test_environment_does_not_leak(ev: Evaluator, task_copy: Path, host: Host):
    assert os.environ["KERNELMAP_DATABASE_URL"] == ENV_SECRETS["KERNELMAP_DATABASE_URL"]
    res = ev.evaluate(task_copy, host.render("escape_env"))
    assert verdict(res) == "LOAD_ERROR", res.messages
    r = report(res)
    assert r["env"] == "none", f"secrets in os.environ: {r['env']}"
    assert r["others"] == "none", f"variables beyond the allow-list: {r['others']}"
    for key in ("self0", "self1", "pid1"):
        assert failed(r[key]) or r[key].endswith(":none"), f"{key}: {r[key]}"
    mem = dict(part.partition(":")[::2] for part in r["mem"].split(";"))
    assert mem.get("PYTH", "-") != "-", f"the memory scan found not even its control: {r['mem']}"
    assert mem.get("post") == "-", f"a database URL in the candidate's memory: {r['mem']}"
    for name in ENV_SECRETS:
        assert name not in _text(res)
    assert_clean(res, host)


# -- 4. data carried from one candidate to the next -------------------------------------------
def _host_processes_named(name: str) -> list[int]:
    found = []
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            if Path(comm).read_text().strip() == name:
                found.append(int(comm.split("/")[2]))
        except OSError:
            pass
    return found


def test_nothing_carries_over_to_the_next_candidate(ev: Evaluator, task_copy: Path, host: Host):
    marker = uuid.uuid4().hex
    writer = host.render("escape_carry", ROLE="write", MARKER=marker)
    res_a = ev.evaluate(task_copy, writer)
    assert verdict(res_a) == "LOAD_ERROR", res_a.messages
    wrote = report(res_a)
    for key in ("shm", "tmp", "home", "sysv", "posix", "sock"):
        assert wrote[key] == "ok", f"the writer could not even write {key} privately: {wrote}"
    assert wrote["sock_check"] == marker, wrote
    time.sleep(0.5)
    daemon = _host_processes_named("kmcarry-" + marker[:7])
    assert not daemon, f"the writer's background process outlived it: {daemon}"
    for where in ("/dev/shm", "/tmp", os.path.expanduser("~")):
        for path in glob.glob(f"{where}/kernelmap-carry*"):
            assert marker not in Path(path).read_text(errors="replace"), f"written: {path}"
    reader = host.render("escape_carry", ROLE="read", MARKER="unknown-to-the-reader")
    res_b = ev.evaluate(task_copy, reader)
    assert verdict(res_b) == "LOAD_ERROR", res_b.messages
    found = report(res_b)
    for key in ("shm", "tmp", "home", "sysv", "posix", "sock"):
        assert failed(found[key]), f"the reader found {key}: {found}"
    assert marker not in _text(res_b), "the marker reached the next candidate"
    assert_clean(res_b, host)


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_candidate_does_not_outlive_its_evaluation(
    secret_env: None, task_copy: Path, host: Host, mode: str
):
    """A child that leaves the judge's process group and drops its parent-death signal is gone
    all the same once its evaluation ends: else it keeps the CPU or GPU busy (and its memory)
    while later candidates are timed, with a harmless verdict of its own."""
    marker = uuid.uuid4().hex[:6]
    cand = host.render("escape_linger", MODE=mode, MARKER=marker)
    name = "kmlinger-" + marker
    cfg = EvalConfig(device="cpu", static_gate=False, timeout_s=60 if mode == "exit" else 4)
    try:
        with Evaluator(cfg) as short:
            res = short.evaluate(task_copy, cand)
            assert verdict(res) == ("OK" if mode == "exit" else "TIMEOUT"), res.messages
            deadline = time.monotonic() + 3
            while _host_processes_named(name) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = _host_processes_named(name)
    finally:
        for pid in _host_processes_named(name):  # ours: started by this test
            os.kill(pid, 9)
    assert not left, f"the candidate's process {left} outlived its evaluation ({mode})"
    assert_clean(res, host)


# -- 5. signalling or tracing the judge -------------------------------------------------------
def test_judge_cannot_be_signalled_or_traced(ev: Evaluator, task_copy: Path, host: Host):
    zygote = ev.zygote().proc
    cand = host.render(
        "escape_signal", JUDGE_PID=os.getpid(), JUDGE_PGID=os.getpgid(0), ZYGOTE_PID=zygote.pid
    )
    res = ev.evaluate(task_copy, cand)
    assert verdict(res) == "LOAD_ERROR", res.messages
    r = report(res)
    for key, value in r.items():
        assert failed(value), f"{key} did not fail: {r}"
    assert r["ptrace_judge"] == "E1" and r["vm_read_judge"] == "E1", r  # seccomp: EPERM
    assert zygote.poll() is None, "the zygote died"
    assert verdict(ev.evaluate(task_copy, HONEST)) == "OK"
    assert_clean(res, host)


def test_killing_the_parent_kills_only_the_candidate(ev: Evaluator, task_copy: Path, host: Host):
    zygote = ev.zygote().proc
    res = ev.evaluate(task_copy, host.render("escape_kill_parent"))
    assert verdict(res) in {"LOAD_ERROR", "RUNTIME_ERROR"}, res.messages
    assert res.messages
    assert zygote.poll() is None, "the zygote died"
    assert verdict(ev.evaluate(task_copy, HONEST)) == "OK"
    assert_clean(res, host)


# -- 6. seeing other processes ----------------------------------------------------------------
def test_other_processes_are_invisible(ev: Evaluator, task_copy: Path, host: Host):
    zygote = ev.zygote().proc
    res = ev.evaluate(task_copy, host.render("escape_proc", JUDGE_PID=os.getpid()))
    assert verdict(res) == "LOAD_ERROR", res.messages
    r = report(res)
    # PID 2 of a namespace of its own, whose PID 1 is the sandbox's init (our code, which
    # ends the namespace when the judge kills it).
    assert r["self"] == "2/1", f"not in a PID namespace of its own: {r['self']}"
    count, _, listed = r["procs"].partition(";")
    pids = [int(item.split(":")[0]) for item in listed.split(";")]
    assert int(count) <= 3 and max(pids) < 100, f"sees processes beyond its own: {r['procs']}"
    assert os.getpid() not in pids and zygote.pid not in pids
    for key in ("judge", "judge_stat", "sched"):
        assert failed(r[key]), f"{key}: {r[key]}"
    assert "pytest" not in _text(res)
    assert_clean(res, host)


# -- 7. hostile task files --------------------------------------------------------------------
def test_hostile_task_is_refused_without_leaking(ev: Evaluator, host: Host):
    task = host.render("escape_task_report", kind="tasks")
    with pytest.raises(TaskError) as info:
        ev.evaluate(task, HONEST)
    text = str(info.value)
    r = report(text)
    for key in ("ls_host", "secret", "write_host"):
        assert failed(r[key]), f"{key}: {r}"
    assert r["env"] == "{}", r
    assert r["pids"] == "1,2", r  # the sandbox's init and itself
    assert r["write_tmp"] == "ok", r  # its private /tmp
    assert r["ls_job"] == "task.py", r
    assert _listing(r["ls_root"]) <= _allowed_children("/root", [task])
    assert_clean(text, host)


def test_hostile_task_import_writes_nothing(ev: Evaluator, host: Host):
    task = host.render("escape_task_import_write", kind="tasks")
    res = ev.evaluate(task, HONEST)
    assert verdict(res) == "OK", res.messages
    assert_clean(res, host)


def test_hostile_reference_model_fails_harmlessly(ev: Evaluator, host: Host):
    task = host.render("escape_task_forward", kind="tasks", JUDGE_PID=os.getpid())
    zygote = ev.zygote().proc
    res = ev.evaluate(task, HONEST)
    assert verdict(res) in {"RUNTIME_ERROR", "LOAD_ERROR"}, res.messages
    assert any("reference" in m for m in res.messages), res.messages
    r = report(res)
    for key in ("write_host", "write_shm", "kill_judge", "ls_host", "secret"):
        # write_shm succeeds in the reference's private /dev/shm only
        assert key == "write_shm" or failed(r[key]), f"{key}: {r}"
    assert r["env"] == "{}" and r["pids"] == "1,2", r
    assert r["ls_job"] == "task.py", f"the reference process sees more than its task: {r}"
    assert zygote.poll() is None
    assert_clean(res, host)


def test_api_validation_of_a_hostile_task_does_not_leak(secret_env: None, host: Host):
    """The API validates an uploaded task in a child: the same sandbox must hold there."""
    from services.api.errors import InvalidTask
    from services.api.validation import validate_task_source

    source = host.render("escape_task_report", kind="tasks").read_text()
    with pytest.raises(InvalidTask) as info:
        validate_task_source(source, timeout_s=120)
    text = str(info.value)
    r = report(text)
    for key in ("ls_host", "secret", "write_host"):
        assert failed(r[key]), f"{key}: {r}"
    assert r["env"] == "{}", f"the validation child has the worker's environment: {r['env']}"
    assert_clean(text, host)


# -- with the gate on, still harmless ---------------------------------------------------------
GATED = [
    ("escape_write", {"API": "open", "MODE": "report"}),
    ("escape_write", {"API": "all", "MODE": "silent"}),
    ("escape_read", {}),
    ("escape_list", {"DIRS": "root=/"}),
    ("escape_env", {}),
    ("escape_carry", {"ROLE": "write"}),
    ("escape_signal", {"JUDGE_PID": 1, "JUDGE_PGID": 1, "ZYGOTE_PID": 1}),
    ("escape_kill_parent", {}),
    ("escape_proc", {"JUDGE_PID": 1}),
    ("escape_linger", {"MODE": "exit"}),
]


@pytest.mark.parametrize(
    ("template", "subs"), GATED, ids=[f"{t}-{'-'.join(map(str, s.values()))}" for t, s in GATED]
)
def test_gate_on_is_harmless(ev_gated: Evaluator, task_copy: Path, host: Host, template, subs):
    subs = {**subs, "TASK": task_copy}
    if template == "escape_signal":  # real pids, in case the gate let it through
        subs.update(JUDGE_PID=os.getpid(), JUDGE_PGID=os.getpgid(0), ZYGOTE_PID=os.getpid())
    if template == "escape_proc":
        subs["JUDGE_PID"] = os.getpid()
    res = ev_gated.evaluate(task_copy, host.render(template, **subs))
    assert verdict(res) == "STATIC_REJECT", res.messages
    assert verdict(res) in HARMLESS
    assert_clean(res, host)


def test_the_manifest_lists_every_escape_file():
    """Every escape_* file of the corpus is a manifest case (run here or by test_corpus.py)."""
    spec = importlib.util.spec_from_file_location("escape_manifest", CORPUS / "manifest.py")
    manifest = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = manifest
    spec.loader.exec_module(manifest)
    on_disk = {str(Path(p).relative_to(ROOT)) for p in glob.glob(str(CORPUS / "*" / "escape_*.py"))}
    listed = set()
    for case in manifest.CASES:
        if case.name.startswith("escape_"):
            assert not case.gate or case.expected == {"STATIC_REJECT"}, case.name
            listed.update(p for p in (case.task, case.candidate) if p and "/escape_" in p)
    assert on_disk == listed, f"not in the manifest: {sorted(on_disk - listed)}"
    for path in on_disk:
        compile((ROOT / path).read_text(), path, "exec")
