"""A cgroup v2 memory limit per sandboxed child, where the host has cgroup v2 and lets us use it.

The worker (the judge's process) makes one sub-group per child under its own cgroup, writes
``memory.max`` (and ``memory.swap.max = 0``) there, and the child moves itself into it
(``cgroup.procs``) as the first step of its sandbox, before any untrusted code runs. After the
child is gone the judge reads ``memory.events`` (an ``oom_kill`` there means the child hit its
limit: the verdict message says so) and removes the group.

cgroup v2 forbids processes in a group whose controllers are delegated to sub-groups, so the
judge first moves itself into a leaf (``kernelmap-judge``) next to the children's groups.
Where any of this is unavailable (cgroup v1, as on the CPU machines here; no write access;
no memory controller) :class:`Groups` says why in ``note`` and children run with the
address-space limit alone (on the CPU) or the CUDA memory fraction (on a GPU).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_path(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path from ``/proc/self/cgroup`` (the ``0::`` line)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


class Groups:
    """The judge's side: one memory-limited sub-group per child, or a note saying why not."""

    def __init__(self, root: Path = ROOT, proc_cgroup: str = "/proc/self/cgroup") -> None:
        self.base: Path | None = None
        self.note: str | None = None
        self._n = itertools.count()
        controllers = root / "cgroup.controllers"
        own = _own_path(proc_cgroup)
        if not controllers.exists() or own is None:
            self.note = "no cgroup v2 on this host: no per-child memory cgroup"
            return
        base = root / own.lstrip("/")
        try:
            if "memory" not in (base / "cgroup.controllers").read_text().split():
                self.note = f"the memory controller is not delegated to {base}"
                return
            leaf = base / "kernelmap-judge"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(f"{os.getpid()}\n")
            (base / "cgroup.subtree_control").write_text("+memory\n")
        except OSError as e:
            self.note = f"cannot use cgroup {base} ({e.strerror or e}): no per-child memory cgroup"
            return
        self.base = base

    def make(self, limit_mb: int) -> Path | None:
        """A new group limited to ``limit_mb`` MiB (None where groups are unavailable)."""
        if self.base is None:
            return None
        group = self.base / f"kernelmap-{os.getpid()}-{next(self._n)}"
        try:
            group.mkdir()
            (group / "memory.max").write_text(f"{int(limit_mb) << 20}\n")
            swap = group / "memory.swap.max"
            if swap.exists():
                swap.write_text("0\n")
        except OSError as e:
            self.note = f"cannot make a memory cgroup under {self.base} ({e.strerror or e})"
            return None
        return group

    @staticmethod
    def oom_killed(group: Path) -> bool:
        """Whether the kernel killed a process of ``group`` for exceeding its limit."""
        try:
            for line in (group / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value or 0) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    @staticmethod
    def remove(group: Path) -> None:
        """Remove an emptied group (the kernel keeps it while a process is still in it)."""
        try:
            group.rmdir()
        except OSError:
            pass


def join(group: str) -> None:
    """Move the calling process into ``group`` (the child's first step; raises ``OSError``)."""
    with open(Path(group) / "cgroup.procs", "w") as f:
        f.write("0\n")
