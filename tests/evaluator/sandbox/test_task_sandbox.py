"""Task validation and template matching run a submitted task only inside the sandbox.

Real processes throughout: the validator child (``evaluator_worker.validate_task``) gets the
task's source on stdin, confines itself and only then imports the task. Hostile tasks try to
read the host (a file, a directory listing, the parent's secrets) and to write to it; a parent
killed mid-validation must leave no process and no copy of the task behind; a host that
refuses namespaces (simulated with a seccomp filter that denies ``unshare``) is refused in
strict mode, with the API's 503, and accepted in relaxed mode.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluator_worker import fsview
from evaluator_worker.task_child import SANDBOX_EXIT
from services.api.errors import InvalidTask
from services.api.validation import validate_task_source

ROOT = Path(__file__).resolve().parents[3]
TASK = ROOT / "tests" / "data" / "softmax_task.py"
SECRET = "postgresql://u:sekret@h/db"

MODEL = """
import json, os
import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


def get_init_inputs():
    return []
"""

LEAKY = (
    MODEL
    + """

def _try(read):
    try:
        return read()
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror}"


def get_inputs():
    seen = {
        "env": os.environ.get("KERNELMAP_DATABASE_URL"),
        "hostname": _try(lambda: open("/etc/hostname").read()),
        "root": _try(lambda: sorted(os.listdir("/root"))),
        "top": sorted(os.listdir("/")),
    }
    raise RuntimeError("LEAK" + json.dumps(seen) + "LEAK")
"""
)

WRITER = (
    MODEL
    + """
import pathlib

import numpy

TARGET = {target!r}
ATTEMPTS = {{
    "open": lambda: open(TARGET + "/by_open.txt", "w").write("x"),
    "pathlib": lambda: pathlib.Path(TARGET, "by_pathlib.txt").write_text("x"),
    "numpy": lambda: numpy.save(TARGET + "/by_numpy.npy", numpy.zeros(3)),
    "torch": lambda: torch.save(torch.zeros(3), TARGET + "/by_torch.pt"),
    "tmp": lambda: open({tmp_file!r}, "w").write("x"),
}}
for _write in ATTEMPTS.values():
    try:
        _write()
    except Exception:
        pass


def get_inputs():
    return [torch.randn(8, 16)]
"""
)

SLEEPER = (
    MODEL
    + """
import subprocess
import sys
import time


def get_inputs():
    # {marker}: a grandchild too, which must die with the rest.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "{marker}"])
    time.sleep(60)
    return [torch.randn(8, 16)]
"""
)

PARENT = """
import sys
from services.runs.json_child import run_json_child

source = sys.stdin.read()
run_json_child(
    "evaluator_worker.validate_task", source, ["--device", "cpu"], device="cpu", timeout_s=300
)
"""

REFUSING = (
    "import runpy, sys; from evaluator_worker import seccomp;"
    " seccomp.install(denied=('unshare',)); sys.argv = ['validate_task', *sys.argv[1:]];"
    " runpy.run_module('evaluator_worker.validate_task', run_name='__main__')"
)

REFUSING_API = """
import json, sys
from evaluator_worker import seccomp
seccomp.install(denied=("unshare",))
from services.api.errors import SandboxUnavailable, status_of
from services.api.validation import validate_task_source

try:
    meta = validate_task_source(sys.stdin.read(), sandbox=sys.argv[1])
    print(json.dumps({"meta": meta}))
except SandboxUnavailable as e:
    print(json.dumps({"status": status_of(e), "detail": str(e)}))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _leak(message: str) -> dict:
    """What the leaky task saw, from the error message (whole: both ends are there)."""
    found = re.search(r"LEAK(\{.*\})LEAK", message)
    assert found, f"the task's report was cut or missing: {message}"
    return json.loads(found.group(1))


def _bound_names(under: str) -> set[str]:
    """Names directly under ``under`` that the sandbox shows (paths it binds read-only)."""
    prefix = under.rstrip("/") + "/"
    return {
        p[len(prefix) :].split("/")[0]
        for p in fsview.read_only_paths([str(ROOT / "evolution")])
        if p.startswith(prefix)
    }


def test_a_task_sees_neither_host_files_nor_the_parents_secrets(monkeypatch):
    monkeypatch.setenv("KERNELMAP_DATABASE_URL", SECRET)
    with pytest.raises(InvalidTask) as caught:
        validate_task_source(LEAKY)
    message = str(caught.value)
    assert "sekret" not in message
    host_name = Path("/etc/hostname").read_text().strip()
    if host_name and host_name != "sandbox":
        assert host_name not in message
    seen = _leak(message)
    assert seen["env"] is None and seen["hostname"] == "sandbox\n"
    # The listing is the sandbox's: only what it binds, none of the host's other entries.
    shown = _bound_names("/") | {"dev", "etc", "home", "proc", "tmp"}
    hidden = set(os.listdir("/")) - shown
    assert hidden, "the host shows nothing the sandbox hides: the check would prove nothing"
    assert set(seen["top"]) <= shown and not hidden & set(seen["top"])
    if isinstance(seen["root"], list):  # the Python installation may live under /root
        assert set(seen["root"]) <= _bound_names("/root")
        if set(os.listdir("/root")) - _bound_names("/root"):
            assert set(seen["root"]) != set(os.listdir("/root"))
    else:
        assert seen["root"].startswith("FileNotFoundError")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A host directory anyone may write to (a refusal proves the sandbox, not permissions)."""
    path = Path(tempfile.mkdtemp(prefix="kernelmap-test-open-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_task_writes_nothing_to_the_host_at_import(open_dir, tmp_path):
    tmp_file = Path(tempfile.gettempdir()) / f"kernelmap-test-{uuid.uuid4().hex}"
    for target in (open_dir, tmp_path):
        source = WRITER.format(target=str(target), tmp_file=str(tmp_file))
        meta = validate_task_source(source)
        assert meta["values_checked"] is True  # the task ran, and every write was attempted
        assert list(target.iterdir()) == []
    assert not tmp_file.exists()


def _processes() -> dict[int, tuple[int, str, str]]:
    """Every live process: pid -> (parent pid, state, command line)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        out[int(entry.name)] = (int(ppid), state, cmdline)
    return out


def _descendants(pid: int, table: dict[int, tuple[int, str, str]]) -> set[int]:
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int], table: dict[int, tuple[int, str, str]]) -> set[int]:
    return {p for p in pids if p in table and table[p][1] != "Z"}


def _files_with(marker: str, top: Path) -> list[Path]:
    """Files under the ``kernelmap-*`` directories of ``top`` whose text holds ``marker``."""
    hits = []
    for base in top.glob("kernelmap-*"):
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath, name)
                try:
                    if path.stat().st_size < 1 << 20 and marker in path.read_text(errors="ignore"):
                        hits.append(path)
                except OSError:
                    continue
    return hits


def _wait_for(marker: str, deadline: float) -> dict[int, tuple[int, str, str]]:
    while time.monotonic() < deadline:
        table = _processes()
        if any(marker in cmd for _, _, cmd in table.values()):
            return table
        time.sleep(0.2)
    raise AssertionError("the task's grandchild never started")


def test_killing_the_parent_leaves_no_process_and_no_copy_of_the_task():
    marker = f"kernelmap-marker-{uuid.uuid4().hex}"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=ROOT, env=_env(), stdin=subprocess.PIPE, text=True
    )
    family: set[int] = set()
    try:
        parent.stdin.write(SLEEPER.format(marker=marker))
        parent.stdin.close()
        table = _wait_for(marker, time.monotonic() + 60)
        family = _descendants(parent.pid, table)
        scratch = {m.group(1) for p in family if (m := re.search(r"--scratch (\S+)", table[p][2]))}
        assert len(scratch) == 1, [table[p][2] for p in family]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(family, _processes()):
            time.sleep(0.1)
        table = _processes()
        assert not _alive(family, table), [table[p][2] for p in _alive(family, table)]
        assert not any(marker in cmd for _, _, cmd in table.values())
        assert _files_with(marker, Path(tempfile.gettempdir())) == []
        # Only empty directories may remain of the validation's scratch (its owner was killed).
        (left,) = scratch
        assert [f for _, _, files in os.walk(left) for f in files] == []
        shutil.rmtree(left, ignore_errors=True)
    finally:
        parent.kill()
        for pid in _alive(family, _processes()):  # a failed check leaves nothing running
            os.kill(pid, signal.SIGKILL)


def test_a_valid_task_validates_with_the_same_meta_as_before():
    from evaluator_worker.task import load_task
    from evaluator_worker.validate_task import task_meta

    expected = task_meta(load_task(TASK, "cpu", check_values="auto"))
    assert validate_task_source(TASK.read_text(), memory_mb=16384) == expected


def test_template_matching_runs_in_the_sandbox_too():
    from services.runs.template_probe import probe_templates

    seeds, _notes = probe_templates(TASK.read_text(), "cuda")
    assert any(s.label.startswith("template:softmax/") for s in seeds), _notes


def _refusing(script: str, mode: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` under a seccomp filter that denies ``unshare`` (no namespaces)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        input=TASK.read_text(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=120,
        start_new_session=True,
    )


@pytest.mark.parametrize("mode", ["strict", "relaxed"])
def test_a_host_without_namespaces_is_refused_strict_and_accepted_relaxed(mode):
    out = _refusing(REFUSING, mode, "-", "--sandbox", mode)
    verdict = json.loads(out.stdout.splitlines()[-1])
    if mode == "strict":
        assert out.returncode == SANDBOX_EXIT, out.stderr
        assert verdict["ok"] is False and verdict["sandbox"] is True
        assert "missing namespaces" in verdict["error"] and "unshare" in verdict["error"]
    else:
        assert out.returncode == 0, out.stderr
        assert verdict["ok"] is True and verdict["meta"]["values_checked"] is True


@pytest.mark.parametrize("mode", ["strict", "relaxed"])
def test_the_api_answers_503_when_it_cannot_validate_safely(mode):
    out = _refusing(REFUSING_API, mode, mode)
    answer = json.loads(out.stdout.splitlines()[-1])
    if mode == "strict":
        assert answer["status"] == 503
        assert "cannot validate tasks safely" in answer["detail"]
        assert "not a problem with your task" in answer["detail"]
    else:
        assert answer["meta"]["dtype"] == "torch.float32"
