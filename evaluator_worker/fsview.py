"""A file-system view of its own for a sandboxed child: namespaces, a minimal root, pivot_root.

:func:`unshare` moves the calling process into new mount, PID, network, IPC and UTS
namespaces (as root directly; otherwise inside a new user namespace that maps only the
caller's own ids). The PID namespace applies to the caller's next child, so :func:`split`
forks once more: the parent stays outside and only relays the child's exit status; the child
is PID 1 of the new namespace, sets the view up and, through :func:`stay_init`, forks the
process that runs the work and stays init, so that the namespace (and everything the work
started) dies with it, which the work cannot prevent.

:func:`build` then mounts a tmpfs as the new root and bind-mounts into it, read-only and at
the same paths, what the interpreter needs (the system's ``/usr`` and libraries, the Python
installation and its ``site-packages``, this package) and the job's own files; a private,
size-limited tmpfs for :data:`WORK` (home, tmp, compiler caches; ``/tmp`` is its ``tmp``)
and one for ``/dev/shm``; ``/dev`` with only ``null``, ``zero``, ``full``, ``random``,
``urandom`` and the GPU's nodes; a fresh ``/proc`` of the new PID namespace. After
``pivot_root`` the host's tree is detached: nothing else of it exists for the child (not the
data directory, other candidates' directories, ``/root``, ``/home`` or the rest of ``/etc``).

Everything here runs in the forked child, before any untrusted code, and reports what it
could not do instead of raising, so the caller decides between strict and relaxed.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
from pathlib import Path
from typing import Any

import kernelmap_errors

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
# statvfs flags that a read-only remount must keep (a user namespace cannot drop them).
_KEEP = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC}
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
)
DEVICES = ("null", "zero", "full", "random", "urandom")
GPU_DEVICES = ("nvidia*", "nvidia-caps")
#: What of /sys a GPU child sees (not /sys/fs, /sys/kernel: the host's cgroups and knobs).
SYS_GPU = ("/sys/devices", "/sys/bus", "/sys/class", "/sys/module")
#: The child's private, writable directory (a fresh tmpfs); ``/tmp`` links into it.
WORK = "/home/sandbox"

_libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    """The host refused one step of the set-up; the message says which and why."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise Refused(f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    ret = _libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data or None))
    _check(ret, f"mount {fstype or src} on {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def unshare() -> str:
    """Enter new namespaces; returns ``"root"`` or ``"user"`` (how), or raises :class:`Refused`."""
    if os.geteuid() == 0 and _libc.unshare(NAMESPACES) == 0:
        _rename()
        return "root"
    first = os.strerror(ctypes.get_errno()) if os.geteuid() == 0 else None
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(NAMESPACES | CLONE_NEWUSER) != 0:
        err = os.strerror(ctypes.get_errno())
        why = f"unshare(mount, PID, network namespaces) as root: {first}; " if first else ""
        raise Refused(f"{why}unshare with a user namespace: {err}")
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as e:
        raise Refused(f"writing the user namespace's id maps: {e}") from None
    _rename()
    return "user"


def _rename() -> None:
    """The new UTS namespace starts with the host's name: give it one of its own."""
    name = b"sandbox"
    _check(_libc.sethostname(name, len(name)), "sethostname in the new UTS namespace")


def stay_init() -> None:
    """Fork the process that runs the work; this one stays PID 1 of the namespace.

    When PID 1 of a PID namespace dies, the kernel kills every other process in it. Staying
    init (and reaping whatever is reparented to it), this process makes the namespace's life
    the judge's to end: killing its process group kills it, and with it everything the work
    started, whatever the work did to detach itself (a new session, a cleared parent-death
    signal, a fake exit). The work's process returns; this one exits with its status.
    """
    pid = os.fork()
    if pid == 0:
        return
    os.closerange(0, 1 << 16)
    code = 1
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if done == pid:
            code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1
            break
    os._exit(max(0, code))


def split(rootdir: str | None = None) -> None:
    """Fork into the new PID namespace; the parent relays the child's exit and never returns.

    The child returns as PID 1 of its namespace. The parent closes every descriptor, so the
    judge's channel and the capture file stay open only in the child, and removes the (empty)
    mount point ``rootdir`` once the child is gone (through a descriptor of its parent
    directory opened now: after ``pivot_root`` the host's tree is no longer in view).
    """
    keep = -1
    if rootdir:
        keep = os.open(os.path.dirname(os.path.abspath(rootdir)), os.O_RDONLY | os.O_DIRECTORY)
    pid = os.fork()
    if pid == 0:
        if keep >= 0:
            os.close(keep)  # a host directory's descriptor must never reach untrusted code
        return
    if keep >= 0:
        os.closerange(0, keep)
        os.closerange(keep + 1, 1 << 16)
    else:
        os.closerange(0, 1 << 16)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(70)
        except InterruptedError:
            continue
    if keep >= 0:
        try:
            os.rmdir(os.path.basename(os.path.abspath(rootdir)), dir_fd=keep)
        except OSError:
            pass
    os._exit(max(0, os.waitstatus_to_exitcode(status)) if os.WIFEXITED(status) else 1)


def read_only_paths(extra: list[str]) -> list[str]:
    """What the child sees read-only: system dirs, the Python installation, this package.

    Also ``kernelmap_errors.py``, the one module outside this package that it imports.
    """
    here = Path(__file__).resolve().parent
    paths = [*SYSTEM_DIRS, *ETC_FILES, sys.prefix, sys.base_prefix, sys.exec_prefix, str(here)]
    paths.append(str(Path(kernelmap_errors.__file__).resolve()))  # the shared error base class
    for entry in sys.path:
        p = Path(entry or ".").resolve()
        if any(part in ("site-packages", "dist-packages") for part in p.parts):
            paths.append(str(p))
    project = str(here.parent)  # its source checkout: only the package itself is shown
    for var in ("LD_LIBRARY_PATH", "PYTHONPATH"):
        for entry in os.environ.get(var, "").split(":"):
            if entry and os.path.isabs(entry) and os.path.normpath(entry) != project:
                paths.append(entry)
    paths += extra
    out: list[str] = []
    for p in sorted({os.path.normpath(p) for p in paths if os.path.lexists(p)}, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _place(root: str, path: str, is_dir: bool) -> str:
    target = root + path
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.lexists(target):
            open(target, "w").close()
    return target


def _bind(root: str, path: str, writable: bool) -> None:
    if os.path.islink(path) and os.path.dirname(path) == "/":
        # /bin -> usr/bin and the like on merged-/usr systems: the link, not a second mount.
        if not os.path.lexists(root + path):
            os.symlink(os.readlink(path), root + path)
        return
    target = _place(root, path, os.path.isdir(path))
    _mount(path, target, None, MS_BIND | MS_REC)
    if not writable:
        # The remount is per mount: every mount the recursive bind brought along too.
        for point in [target, *_submounts(target)]:
            _read_only(point)


def _read_only(point: str) -> None:
    keep = os.statvfs(point).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID
    for st, ms in _KEEP.items():
        if keep & st:
            flags |= ms
    _mount(None, point, None, flags)


def _submounts(target: str) -> list[str]:
    """Mount points strictly below ``target`` (from ``/proc/self/mountinfo``)."""
    prefix = target.rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape") if len(fields) > 4 else ""
            if point.startswith(prefix):
                points.append(point)
    return points


def _devices(root: str, gpu: bool, shm_mb: int) -> None:
    dev = root + "/dev"
    os.makedirs(dev, exist_ok=True)
    names = list(DEVICES)
    if gpu:
        for pattern in GPU_DEVICES:
            names += [os.path.basename(p) for p in glob.glob("/dev/" + pattern)]
    for name in names:
        if os.path.exists("/dev/" + name):
            _bind(root, "/dev/" + name, writable=True)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(dev + "/shm")
    _mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_mb}m,mode=1777")


def _etc(root: str, uid: int, gid: int) -> None:
    """A passwd and group naming only the sandbox's user (getpass and friends ask)."""
    os.makedirs(root + "/etc", exist_ok=True)
    _write(root + "/etc/passwd", f"sandbox:x:{uid}:{gid}::{WORK}/home:/bin/sh\n")
    _write(root + "/etc/group", f"sandbox:x:{gid}:\n")
    _write(root + "/etc/hostname", "sandbox\n")


def build(opts: dict[str, Any], uid: int, gid: int) -> list[str]:
    """Build the child's root under ``opts["rootdir"]`` and pivot into it.

    ``opts``: ``rootdir`` (an empty host directory to mount the new root on), ``binds`` (a
    list of ``[path, writable]`` shown at the same path), ``extra_read_only`` (more host
    paths), ``device``, ``disk_mb`` (size of :data:`WORK`), ``shm_mb`` (of ``/dev/shm``).
    Returns the read-only paths it bound.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = str(opts["rootdir"])
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    size = int(opts.get("disk_mb") or 2048)
    # One private, size-limited tmpfs for the home and /tmp (which is its tmp/), mounted
    # first: binds of host paths under /tmp (the job's files) go on top of it.
    work = _place(root, WORK, True)
    options = f"size={size}m,mode=700,uid={uid},gid={gid}"
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, options)
    os.mkdir(work + "/tmp")
    os.chmod(work + "/tmp", 0o1777)
    _mount(work + "/tmp", _place(root, "/tmp", True), None, MS_BIND)
    ro = read_only_paths(list(opts.get("extra_read_only") or []))
    clash = [p for p in ro if p == WORK or p.startswith(WORK + "/")]
    if clash:
        raise Refused(f"{clash[0]} would be hidden under the private directory {WORK}")
    for path in ro:
        _bind(root, path, writable=False)
    gpu = opts.get("device") == "cuda"
    if gpu:
        for part in SYS_GPU:  # the driver and NVML read the PCI tree and the module's state
            if os.path.isdir(part):
                _bind(root, part, writable=False)
    for path, writable in opts.get("binds") or []:
        if os.path.lexists(path):
            _bind(root, os.path.normpath(path), bool(writable))
    _devices(root, gpu, int(opts.get("shm_mb") or 512))
    _etc(root, uid, gid)
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _pivot(root)
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return ro


def _pivot(root: str) -> None:
    """Make ``root`` the root and detach the host's tree (``pivot_root(".", ".")``)."""
    nr = _PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise Refused(f"pivot_root: unknown system call number on {platform.machine()}")
    os.chdir(root)
    _check(_libc.syscall(nr, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir("/")
