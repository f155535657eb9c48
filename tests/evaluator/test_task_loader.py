"""load_task on bad task files: each mistake a task author can make gets a TaskError that names it
(and its line, for a syntax error); a good task loads."""

from __future__ import annotations

import pytest

from evaluator_worker.errors import TaskError
from evaluator_worker.task import load_task

GOOD = """\
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        {init}

    def forward(self, x):
        {forward}


def get_inputs():
    {inputs}


def get_init_inputs():
    return []
{extra}"""


def task(
    forward: str = "return torch.relu(x)",
    init: str = "pass",
    inputs: str = "return [torch.randn(8, 16)]",
    extra: str = "",
) -> str:
    """A small valid task with one part replaced."""
    return GOOD.format(forward=forward, init=init, inputs=inputs, extra=extra)


SYNTAX = task().replace("def get_inputs():", "def get_inputs(:")
SYNTAX_LINE = SYNTAX.splitlines().index("def get_inputs(:") + 1

BAD = [
    ("syntax_error", SYNTAX, "syntax error", SYNTAX_LINE),
    ("no_model", task().replace("class Model(", "class Net("), "no class Model", None),
    ("no_get_inputs", task().replace("def get_inputs(", "def make_inputs("), "get_inputs", None),
    (
        "no_get_init_inputs",
        task().replace("def get_init_inputs(", "def init_inputs("),
        "get_init_inputs",
        None,
    ),
    ("input_is_int", task(inputs="return [3]"), "not a tensor", None),
    ("input_is_str", task(inputs='return ["x"]'), "not a tensor", None),
    ("forward_raises", task(forward='raise RuntimeError("boom")'), "raised", None),
    ("constant_zeros", task(forward="return x * 0"), "near-constant", None),
    (
        "ignores_input",
        task(
            init="self.w = nn.Parameter(torch.randn(1, 16))",
            forward="return self.w.expand(x.shape[0], -1)",
        ),
        "independent of its inputs",
        None,
    ),
    ("atol_not_number", task(extra='ATOL = "tight"\n'), "ATOL", None),
    ("shapes_not_callables", task(extra="SHAPES = [(3, 77), (17, 4099)]\n"), "SHAPES", None),
]


@pytest.mark.parametrize(
    ("source", "phrase", "line"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_task_is_rejected_with_a_reason(tmp_path, source, phrase, line):
    path = tmp_path / "task.py"
    path.write_text(source)
    with pytest.raises(TaskError) as info:
        load_task(str(path))
    assert phrase.lower() in str(info.value).lower(), str(info.value)
    if line is not None:
        assert info.value.line == line, (info.value.line, str(info.value))


def test_forward_error_names_the_exception(tmp_path):
    path = tmp_path / "task.py"
    path.write_text(task(forward='raise RuntimeError("boom")'))
    with pytest.raises(TaskError, match="boom"):
        load_task(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match="(?i)not found"):
        load_task(str(tmp_path / "no_such_task.py"))


def test_good_task_loads(tmp_path):
    path = tmp_path / "task.py"
    path.write_text(task(extra="ATOL = 1e-5\nSHAPES = [lambda: [torch.randn(3, 5)]]\n"))
    loaded = load_task(str(path))
    assert str(loaded.path) == str(path)
