"""Each operator's prompt carries what it must, stays deterministic and within its budget."""

from __future__ import annotations

import pytest

from evolution.candidate import Outcome
from evolution.descriptors import DESCRIPTORS
from evolution.llm.prompts import (
    CROSSOVER,
    CUT_MARKER,
    MUTATE,
    OPERATORS,
    REPAIR,
    TARGET,
    Dim,
    Evaluation,
    Niche,
    ParentView,
    PromptContext,
    build_messages,
    truncate,
)

TASK = (
    "import torch\n\nclass Model(torch.nn.Module):\n    def forward(self, x):\n"
    "        return torch.softmax(x, -1)\n"
)


def _src(tag: str, lines: int = 10) -> str:
    body = "".join(f"    y{i} = x  # {tag} line {i}\n" for i in range(lines))
    return f"class ModelNew:\n    # {tag}\n{body}"


GOOD = Evaluation(
    "OK",
    speedup_vs_eager=1.8,
    speedup_vs_compile=1.25,
    spread=0.04,
    floor_fraction=0.42,
    features={"kernel_count": 2, "n_regs": 40, "cupy_kernels": [{"x": 1}]},
)
PARENT = ParentView(11, _src("parent"), GOOD, params={"BLOCK": 128}, cell={"occupancy": 0.5})
OTHER = ParentView(12, _src("other"), GOOD, cell={"occupancy": 1.0})
FAILED = ParentView(
    13, _src("failed"), Evaluation("INCORRECT", messages=("max abs error 3.1 at [0, 4]",))
)
INSPIRATIONS = tuple(ParentView(20 + i, _src(f"insp{i}"), GOOD) for i in range(5))
DIMS = tuple(Dim.from_descriptor(DESCRIPTORS[n]) for n in ("occupancy", "kernel_count"))


def _ctx(**kw) -> PromptContext:
    base = dict(
        task_source=TASK,
        hardware={"gpu": "H100 SXM", "sm": 90, "hbm_gbps": 3350.0},
        dims=DIMS,
        advice=("Tile the reduction so each program owns one row.",),
        inspirations=INSPIRATIONS,
    )
    base.update(kw)
    return PromptContext(**base)


def _all(ctx: PromptContext, op: str) -> tuple[str, str]:
    parents = {MUTATE: (PARENT,), CROSSOVER: (PARENT, OTHER), REPAIR: (FAILED,), TARGET: ()}[op]
    niche = Niche({"occupancy": 0.25, "kernel_count": 1}, PARENT) if op == TARGET else None
    messages = build_messages(op, ctx, parents, niche)
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[0]["content"], messages[1]["content"]


@pytest.mark.parametrize("op", OPERATORS)
def test_every_prompt_carries_the_common_parts(op):
    system, user = _all(_ctx(), op)
    assert "class ModelNew(nn.Module)" in system and "SEARCH_SPACE" in system
    assert "static gate" in system.lower() and "try/except" in system
    assert "Tile the reduction" in system
    assert "torch.softmax(x, -1)" in user
    assert "H100 SXM" in user and "hbm_gbps" in user
    assert "insp0" in user and "Inspiration" in user
    assert "insp4" not in user  # at most max_inspirations (4)


@pytest.mark.parametrize("op", [MUTATE, CROSSOVER, TARGET])
def test_the_parent_and_its_evaluation_are_shown(op):
    _, user = _all(_ctx(), op)
    assert PARENT.source.rstrip() in user
    assert "1.80x vs PyTorch eager" in user and "1.25x vs torch.compile" in user
    assert "timing spread 4.0%" in user and "42% of the speed-of-light floor" in user
    assert "kernel_count=2" in user and "n_regs=40" in user and "cupy_kernels" not in user
    assert "BLOCK=128" in user and "occupancy=0.5" in user
    assert "<<<<<<< SEARCH" in user


def test_crossover_shows_both_parents():
    _, user = _all(_ctx(), CROSSOVER)
    assert "First parent (candidate 11)" in user and "Second parent (candidate 12)" in user
    assert OTHER.source.rstrip() in user


def test_repair_shows_the_verdict_and_messages():
    _, user = _all(_ctx(), REPAIR)
    assert "failed with verdict INCORRECT" in user and "max abs error 3.1" in user
    assert FAILED.source.rstrip() in user


def test_target_names_the_descriptors_and_values():
    _, user = _all(_ctx(), TARGET)
    assert "occupancy = 0.25" in user and DESCRIPTORS["occupancy"].label in user
    assert "kernel_count = 1" in user and "kernels per forward" in user


def test_target_without_a_base_asks_for_a_whole_file():
    messages = build_messages(TARGET, _ctx(), (), Niche({"occupancy": 0.9}))
    assert "<<<<<<< SEARCH" not in messages[1]["content"]
    assert "```python block" in messages[1]["content"]


def test_a_parent_is_not_its_own_inspiration():
    ctx = _ctx(inspirations=(PARENT, *INSPIRATIONS[:2]))
    _, user = _all(ctx, MUTATE)
    assert user.count("# parent\n") == 1


@pytest.mark.parametrize("op", OPERATORS)
def test_prompts_are_deterministic(op):
    ctx = _ctx(hardware={"sm": 90, "gpu": "H100 SXM", "hbm_gbps": 3350.0})
    assert _all(ctx, op) == _all(_ctx(), op)


@pytest.mark.parametrize("op", OPERATORS)
def test_the_budget_cuts_optional_parts_never_the_diff_base(op):
    big = tuple(ParentView(30 + i, _src(f"big{i}", 400), GOOD) for i in range(4))
    ctx = _ctx(task_source=TASK + "# pad\n" * 3000, inspirations=big, budget_chars=14_000)
    system, user = _all(ctx, op)
    assert len(system) + len(user) <= 14_000
    base = FAILED if op == REPAIR else PARENT
    assert base.source.rstrip() in user
    assert "characters cut" in user
    assert "torch.softmax(x, -1)" in user  # the head of the task is kept


def test_a_prompt_fits_when_nothing_needs_cutting():
    system, user = _all(_ctx(budget_chars=1_000_000), MUTATE)
    assert "characters cut" not in user


def test_truncate_keeps_head_and_tail_within_limit():
    text = "".join(f"line {i}\n" for i in range(1000))
    cut = truncate(text, 500)
    assert len(cut) <= 500
    assert cut.startswith("line 0\n") and cut.endswith("line 999\n")
    assert CUT_MARKER.split("[")[0] in cut
    assert truncate("short", 500) == "short"


def test_nothing_but_the_inputs_reaches_the_prompt(monkeypatch):
    monkeypatch.setenv("KERNELMAP_LLM_API_KEY", "sk-secret-do-not-leak")
    system, user = _all(_ctx(), MUTATE)
    assert "sk-secret" not in system + user


def test_evaluation_from_an_outcome():
    outcome = Outcome(7, "OK", 0.3, "gpu-speedup", 0.05, {"floor_fraction": 0.7}, {}, 1.4, 1.1)
    ev = Evaluation.from_outcome(outcome, ["fine"])
    assert (ev.speedup_vs_eager, ev.floor_fraction, ev.spread) == (1.4, 0.7, 0.05)
    assert ev.messages == ("fine",)


def test_wrong_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown operator"):
        build_messages("explode", _ctx(), (PARENT,))
    with pytest.raises(ValueError, match="crossover takes 2"):
        build_messages(CROSSOVER, _ctx(), (PARENT,))
