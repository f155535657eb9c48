"""Confining a freshly forked child process before any untrusted code runs.

Every child that runs code we did not write (a candidate, a task's reference model, the
baselines, task validation, template probing) enters the sandbox first:

- a new session, so a timeout ``killpg``s everything it started, and a parent-death signal,
  so it dies with the process that forked it;
- new mount, PID, network, IPC and UTS namespaces and a root of its own (:mod:`fsview`):
  the interpreter and its own files read-only, a private size-limited ``/work`` and
  ``/dev/shm``, nothing else of the host; it is PID 1 of a namespace holding only itself;
- an unprivileged user id (a distinct one per child) when the worker runs as root, and a
  process-count limit;
- an environment built from an allow-list (:data:`ALLOWED_ENV`), never inherited;
- resource limits (no core dumps, bounded file sizes and descriptors, an address-space limit
  on the CPU; CUDA processes cannot take one because the driver reserves huge virtual ranges),
  and a cgroup v2 memory limit where the host has one (:mod:`cgroup`);
- ``PR_SET_NO_NEW_PRIVS`` and a seccomp filter (:mod:`seccomp`);
- stdout/stderr redirected to a capture file the judge reads, so nothing it prints reaches
  our own output.

``mode="strict"`` (the default, ``KERNELMAP_SANDBOX``) refuses to go on when any layer cannot
be set up, with :class:`SandboxUnavailable` naming what is missing and how to provide it;
``"relaxed"`` goes on with what the host allows and reports the rest in ``missing``.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

from evaluator_worker import fsview

#: Variables a child may inherit from the worker (locale, search path, CUDA and Triton
#: settings). Everything else, ``KERNELMAP_*`` URLs, keys and tokens included, is dropped.
ALLOWED_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "PYTHONPATH",
    "PYTHONHASHSEED",
    "LD_LIBRARY_PATH",
    "CC",
    "CXX",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_MODULE_LOADING",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "TORCH_CUDA_ARCH_LIST",
    "TRITON_INTERPRET",
    "TRITON_PTXAS_PATH",
    "TRITON_CUOBJDUMP_PATH",
    "TRITON_NVDISASM_PATH",
    "TRITON_LIBCUDA_PATH",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
ALLOWED_PREFIXES = ("LC_",)
#: A child's user id when the worker runs as root: ``UID_BASE`` plus its pid outside the PID
#: namespace (pids are at most 2**22: no two live children of the host share a user id).
UID_BASE = 200000
UID_SPAN = 1 << 22
MODES = ("strict", "relaxed")
HOW_TO = (
    "run the worker as root with namespaces allowed (in Docker: cap_add SYS_ADMIN and"
    " security_opt seccomp=unconfined, apparmor=unconfined; see docs/cluster.md), or allow"
    " unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1), or accept a"
    " weaker sandbox with KERNELMAP_SANDBOX=relaxed"
)


class SandboxUnavailable(RuntimeError):
    """Strict mode could not set up every layer of the sandbox (the message says which)."""


def environment(base: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``base`` (the worker's environment by default)."""
    base = os.environ if base is None else base
    return {k: v for k, v in base.items() if k in ALLOWED_ENV or k.startswith(ALLOWED_PREFIXES)}


def _limit(which: int, value: int) -> None:
    """Lower both limits to ``value`` (never raising a hard limit the host already set)."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _ids(opts: dict[str, Any]) -> tuple[int, int, bool]:
    """The child's user and group id, and whether they differ from the worker's.

    Called before the PID namespace is entered (where every child is PID 1): the offset is
    the child's pid outside it. ``opts["uid"]`` (the judge's :func:`service_uid`) is shared
    by the processes that write one per-task cache (baselines, the Triton prebuild).
    """
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid(), False
    uid = int(opts.get("uid") or UID_BASE + os.getpid() % UID_SPAN)
    return uid, uid, True


def service_uid() -> int | None:
    """The user id of the baseline and prebuild processes (None unless the worker is root)."""
    return UID_BASE - 1 if os.geteuid() == 0 else None


def hand_over(path: Path) -> None:
    """Give a host directory the judge made to :func:`service_uid` (no-op unless root)."""
    uid = service_uid()
    if uid is not None:
        os.chown(path, uid, uid)


def _drop_capabilities() -> None:
    """Clear every capability (a user namespace gives its creator all of them inside it)."""
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    if ctypes.CDLL(None, use_errno=True).capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _others_can_import() -> bool:
    """Whether any user may traverse to the Python installation (``/root`` often forbids)."""
    import sys

    for top in {sys.prefix, sys.base_prefix}:
        p = Path(top).resolve()
        for d in (p, *p.parents):
            if not os.stat(d).st_mode & 0o001:
                return False
    return True


def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _parent_death() -> None:
    """SIGKILL this process when its parent dies (cleared by a change of ids: set again)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def _namespaces(
    opts: dict[str, Any], ids: tuple[int, int], applied: dict[str, Any], missing: list[str]
) -> str:
    """Namespaces and the root of its own; returns the directory the child works in."""
    try:
        how = fsview.unshare()
    except fsview.Refused as e:
        missing.append(f"namespaces ({e})")
        return str(Path(opts["workdir"]))
    fsview.split(opts.get("rootdir"))
    _parent_death()
    applied.update(namespaces=how, pid_namespace=True, network_isolated=True)
    try:
        applied["read_only"] = fsview.build(opts, *ids)
        applied["file_system"] = "private root"
        return fsview.WORK
    except (fsview.Refused, OSError) as e:
        missing.append(f"private file-system view ({e})")
        return str(Path(opts["workdir"]))


def _seccomp(applied: dict[str, Any], missing: list[str]) -> None:
    try:
        from evaluator_worker import seccomp

        seccomp.install()
        applied["seccomp"] = True
    except (ImportError, RuntimeError, OSError) as e:
        missing.append(f"seccomp filter ({e})")


def enter(opts: dict[str, Any], capture_fd: int) -> dict[str, Any]:
    """Apply the sandbox in the current (child) process; returns what was applied.

    ``opts``: ``workdir`` (a private host directory), ``rootdir`` (an empty host directory
    for the new root), ``mode`` (``strict``/``relaxed``), ``device`` (``cpu``/``cuda``),
    ``memory_limit_mb``, ``max_processes``, ``disk_mb``, ``shm_mb``, ``binds`` (host paths
    shown at the same path, ``[path, writable]``), ``interpret`` (Triton interpreter),
    ``triton_shared_cache`` (the worker's read-only layer of Triton modules),
    ``inductor_cache`` and, for the evaluator's prebuild process only, ``triton_cache_dir``.
    Raises :class:`SandboxUnavailable` in strict mode when a layer is missing.
    """
    os.setsid()
    os.dup2(capture_fd, 1)
    os.dup2(capture_fd, 2)
    os.close(capture_fd)
    return confine(opts)


def confine(opts: dict[str, Any]) -> dict[str, Any]:
    """The sandbox of :func:`enter` for a process whose output is already where it belongs.

    Used by the fresh interpreters that validate a task or match it against the templates
    (:mod:`services.runs.json_child`): ``opts`` as for :func:`enter`; the process must already
    lead its own session. In the namespaces, the calling process is replaced by a child of it
    (PID 1 of the new PID namespace); the caller's original process only waits, removes
    ``rootdir`` and exits with the child's status.
    """
    t0 = time.perf_counter()
    _parent_death()
    mode = opts.get("mode", "strict")
    if mode not in MODES:
        raise SandboxUnavailable(f"sandbox mode must be one of {MODES}, got {mode!r}")
    applied: dict[str, Any] = {"session": True, "mode": mode}
    if opts.get("cuda_memory_fraction"):  # child.py sets it before any untrusted code runs
        applied["cuda_memory_fraction"] = float(opts["cuda_memory_fraction"])
    missing: list[str] = []
    if opts.get("cgroup"):
        try:
            from evaluator_worker import cgroup

            cgroup.join(opts["cgroup"])
            applied["memory_cgroup"] = True
        except OSError as e:
            missing.append(f"the child's memory cgroup ({e})")
    uid, gid, drop = _ids(opts)
    work = Path(_namespaces(opts, (uid, gid), applied, missing))
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, 1 << 30)
    _limit(resource.RLIMIT_NOFILE, 4096)
    if opts.get("device") == "cpu" and opts.get("memory_limit_mb"):
        _limit(resource.RLIMIT_AS, int(opts["memory_limit_mb"]) << 20)
        applied["memory_limit_mb"] = int(opts["memory_limit_mb"])
    if drop and not applied.get("file_system") and not _others_can_import():
        drop = False  # without a root of its own, another user could not even import torch
    if drop and applied.get("namespaces") != "user":
        if not applied.get("file_system"):
            os.chown(work, uid, gid)
        _drop_to(uid, gid)
        _parent_death()
    elif applied.get("namespaces") == "user":
        _drop_capabilities()
    applied["uid"] = os.getuid()
    if os.getuid() == 0:
        missing.append("an unprivileged user id (the child would run as root)")
    nproc = int(opts.get("max_processes") or 512)
    _limit(resource.RLIMIT_NPROC, nproc)
    applied["max_processes"] = nproc
    _environment(opts, work, shared=bool(applied.get("file_system")))
    _seccomp(applied, missing)
    applied["missing"] = missing
    applied["level"] = "strict" if not missing else "relaxed"
    if missing and mode == "strict":
        raise SandboxUnavailable(
            "the sandbox cannot be set up on this host: missing "
            + "; ".join(missing)
            + ". To fix: "
            + HOW_TO
        )
    if applied.get("pid_namespace"):
        fsview.stay_init()
    os.chdir(work)
    applied["setup_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    return applied


def _environment(opts: dict[str, Any], work: Path, shared: bool) -> None:
    """Replace the environment with the allow-list and the child's own directories.

    ``shared``: whether the per-worker caches may be used. Without a private file-system view
    (relaxed mode) every child could write them, so each child gets private ones instead.
    """
    env = environment()
    env.update({str(k): str(v) for k, v in (opts.get("pass_env") or {}).items()})
    dirs = {
        "HOME": work / "home",
        "TMPDIR": work / "tmp",
        "TRITON_CACHE_DIR": work / "triton",
        "CUPY_CACHE_DIR": work / "cupy",
        "TORCH_EXTENSIONS_DIR": work / "torch_extensions",
        "TORCHINDUCTOR_CACHE_DIR": Path(
            (shared and opts.get("inductor_cache")) or work / "inductor"
        ),
    }
    if opts.get("triton_cache_dir"):  # the evaluator's own prebuild process only
        dirs["TRITON_CACHE_DIR"] = Path(opts["triton_cache_dir"])
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env.update(USER="sandbox", LOGNAME="sandbox", PYTHONDONTWRITEBYTECODE="1")
    env["TRITON_INTERPRET"] = "1" if opts.get("interpret") else "0"
    if shared and opts.get("triton_shared_cache"):
        # Driver utilities and launchers built once per worker, read-only (triton_cache.py).
        env["TRITON_CACHE_MANAGER"] = "evaluator_worker.triton_cache:LayeredCacheManager"
        env["KERNELMAP_TRITON_SHARED_CACHE"] = str(opts["triton_shared_cache"])
    os.environ.clear()
    os.environ.update(env)


def probe(device: str = "cpu") -> dict[str, Any]:
    """What the sandbox can set up on this host: ``{"level", "missing"}``.

    A forked child enters the sandbox in relaxed mode and reports what it applied; the
    caller compares ``missing`` with its own mode (a strict worker refuses jobs when
    anything is missing). Safe to call in a process without threads only (it forks).
    """
    import json
    import shutil
    import tempfile

    root, work = tempfile.mkdtemp(prefix="kernelmap-root-"), tempfile.mkdtemp(prefix="kernelmap-")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            opts = {"rootdir": root, "workdir": work, "mode": "relaxed", "device": device}
            applied = confine(opts)
            report = {"level": applied["level"], "missing": applied["missing"]}
            os.write(w, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    for path in (root, work):
        shutil.rmtree(path, ignore_errors=True)
    try:
        return json.loads(data)
    except ValueError:
        return {"level": "unavailable", "missing": ["the sandbox probe crashed"]}


def report(device: str, mode: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """How this host confines untrusted code: ``{"mode", "level", "missing"}``.

    ``level`` is ``strict`` (every layer set up), ``relaxed`` (relaxed mode, some layer
    missing: results say so) or ``refusing`` (strict mode, some layer missing: the worker
    takes no jobs). Probed by :func:`probe` in a fresh interpreter (this process may have
    threads, which a fork would not carry).
    """
    import json
    import subprocess
    import sys

    try:
        out = subprocess.run(
            [sys.executable, "-m", "evaluator_worker.sandbox", device],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            env=environment(),
        )
        found = json.loads(out.stdout.strip().splitlines()[-1])
        missing = [str(m) for m in found.get("missing", [])]
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError, AttributeError) as e:
        missing = [f"the sandbox probe failed ({e})"]
    level = "strict" if not missing else ("relaxed" if mode == "relaxed" else "refusing")
    return {"mode": mode, "level": level, "missing": missing}


def refusal(report: dict[str, Any]) -> str | None:
    """The one line a strict worker refuses jobs with, or None when it may take them."""
    if report.get("level") != "refusing":
        return None
    return (
        "this worker refuses untrusted jobs: the sandbox cannot be set up here (missing "
        + "; ".join(report["missing"])
        + "). To fix: "
        + HOW_TO
    )


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(probe(sys.argv[1] if len(sys.argv) > 1 else "cpu")))
