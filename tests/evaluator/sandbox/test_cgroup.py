"""The cgroup v2 memory groups, on a directory tree laid out as the kernel lays out cgroupfs.

The CPU machines have cgroup v1, so the kernel side (limits enforced, oom_kill counted) is not
exercised here; these tests check what kernelmap writes and reads, and the notes it gives where
cgroup v2 is missing or not delegated.
"""

from __future__ import annotations

import os

from evaluator_worker import cgroup


def _tree(tmp_path, controllers="memory pids"):
    root = tmp_path / "cgroup"
    base = root / "workers" / "w1"
    base.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (base / "cgroup.controllers").write_text(controllers + "\n")
    (base / "cgroup.subtree_control").write_text("")
    proc = tmp_path / "self_cgroup"
    proc.write_text("0::/workers/w1\n")
    return root, base, str(proc)


def test_groups_move_the_judge_to_a_leaf_and_delegate_memory(tmp_path):
    root, base, proc = _tree(tmp_path)
    groups = cgroup.Groups(root, proc)
    assert groups.note is None and groups.base == base
    assert (base / "kernelmap-judge" / "cgroup.procs").read_text() == f"{os.getpid()}\n"
    assert (base / "cgroup.subtree_control").read_text() == "+memory\n"
    g = groups.make(512)
    assert g is not None and g.parent == base
    assert (g / "memory.max").read_text() == f"{512 << 20}\n"
    other = groups.make(512)
    assert other != g  # one group per child


def test_a_child_joins_its_group_and_an_oom_kill_is_seen(tmp_path):
    root, base, proc = _tree(tmp_path)
    g = cgroup.Groups(root, proc).make(64)
    (g / "cgroup.procs").write_text("")
    cgroup.join(str(g))
    assert (g / "cgroup.procs").read_text() == "0\n"
    (g / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    assert not cgroup.Groups.oom_killed(g)
    (g / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.Groups.oom_killed(g)
    for f in g.iterdir():
        f.unlink()
    cgroup.Groups.remove(g)
    assert not g.exists()


def test_no_cgroup_v2_or_no_memory_controller_is_a_note_not_a_failure(tmp_path):
    v1 = cgroup.Groups(tmp_path / "nothing", str(tmp_path / "none"))
    assert v1.base is None and "no cgroup v2" in v1.note and v1.make(64) is None
    root, _, proc = _tree(tmp_path, controllers="pids")
    undelegated = cgroup.Groups(root, proc)
    assert undelegated.base is None and "memory controller" in undelegated.note
