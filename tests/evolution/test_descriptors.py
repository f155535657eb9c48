"""Descriptor dimensions: values from evaluator features and params, registry and parsing."""

from __future__ import annotations

import math

import pytest

from evolution.candidate import Outcome, outcome_from_result
from evolution.descriptors import (
    DESCRIPTORS,
    SM_SHARED_BYTES,
    default_dims,
    param_descriptor,
    param_spec,
    parse_dims,
    theoretical_occupancy,
)
from evolution.fakes import fake_result
from evolution.grid import MapArchive


def outcome(features=None, params=None, verdict="OK") -> Outcome:
    return Outcome(
        candidate_id=1,
        verdict=verdict,
        objective=0.1,
        objective_label="gpu-speedup",
        noise=0.0,
        features=features or {},
        params=params or {},
    )


GPU_FEATURES = {
    "n_regs": 32,
    "n_spills": 0,
    "shared_bytes": 16384,
    "num_warps": 4,
    "num_stages": 3,
    "tensor_cores": True,
    "vector_load_v4": True,
    "kernel_count": 2,
    "floor_fraction": 0.4,
    "uses_triton": True,
    "uses_cupy": False,
    "custom_kernels": ["add_kernel"],
}
CPU_FEATURES = {
    "uses_triton": True,
    "uses_cupy": False,
    "custom_kernels": ["k"],
    "trials": 3,
    "worst_rel_l2": 1e-7,
}


@pytest.mark.parametrize(
    ("regs", "shared", "warps", "expected"),
    [
        (32, 0, 4, 1.0),  # 16 blocks x 4 warps fill the SM
        (128, 0, 4, 0.25),  # 4096 regs/warp -> 16 warps
        (255, 0, 8, 0.125),  # rounded to 256 regs/thread -> one 8-warp block
        (40, 100_000, 4, 0.125),  # shared memory allows 2 blocks
        (0, 0, 1, 0.5),  # 32 blocks max x 1 warp
        (0, 0, 32, 1.0),
        (32, SM_SHARED_BYTES, 4, 0.0),  # does not fit with the 1 KiB reserve
    ],
)
def test_theoretical_occupancy_uses_hopper_limits(regs, shared, warps, expected):
    assert theoretical_occupancy(regs, shared, warps) == pytest.approx(expected)


def test_every_descriptor_reads_a_gpu_outcome_within_its_range():
    o = outcome(GPU_FEATURES, {"BLOCK": 1024, "num_warps": 4})
    for d in DESCRIPTORS.values():
        v = d.value(o)
        assert v is not None, d.name
        assert d.low <= d.measure(o) <= d.high
    assert DESCRIPTORS["tensor_cores"].value(o) == 1.0
    assert DESCRIPTORS["vector_width"].value(o) == 4.0
    assert DESCRIPTORS["occupancy"].value(o) == pytest.approx(theoretical_occupancy(32, 16384, 4))
    assert DESCRIPTORS["kernel_count"].value(o) == 2
    assert DESCRIPTORS["backend"].value(o) == 1
    assert DESCRIPTORS["block_size"].value(o) == 10
    assert DESCRIPTORS["num_warps_param"].value(o) == 2


def test_missing_features_read_none_and_map_to_low():
    o = outcome({"uses_triton": False, "kernel_count": None, "floor_fraction": None})
    for name in ("occupancy", "n_regs", "tensor_cores", "vector_width", "kernel_count"):
        d = DESCRIPTORS[name]
        assert d.value(o) is None, name
        assert d.measure(o) == d.low
    assert DESCRIPTORS["backend"].value(o) == 0


def test_cpu_outcome_has_parameter_descriptors_only():
    o = outcome_from_result(
        3,
        fake_result(
            {"BLOCK_M": 64, "BLOCK_N": 256, "num_warps": 8},
            0.5,
            device="cpu",
            features=CPU_FEATURES,
        ),
    )
    assert DESCRIPTORS["occupancy"].value(o) is None
    assert DESCRIPTORS["block_size"].value(o) == 8  # the largest power-of-two BLOCK param
    assert DESCRIPTORS["num_warps_param"].value(o) == 3
    assert DESCRIPTORS["backend"].value(o) == 1
    for name in default_dims("cpu"):
        assert DESCRIPTORS[name].applies_to("cpu")
        assert not DESCRIPTORS[name].measured


def test_block_size_ignores_non_powers_of_two_and_absent_params():
    assert DESCRIPTORS["block_size"].value(outcome(params={"BLOCK": 96})) == 0
    assert DESCRIPTORS["block_size"].value(outcome(params={"block_k": 32, "BLOCK": 96})) == 5
    assert DESCRIPTORS["block_size"].value(outcome(params={})) == 0
    assert DESCRIPTORS["num_warps_param"].value(outcome(params={"num_warps": 3})) == 0


def test_backend_cupy_and_registers_from_cupy_kernels():
    o = outcome(
        {
            "uses_cupy": True,
            "uses_triton": False,
            "cupy_kernels": [{"kernel": "k", "num_regs": 40, "shared_size_bytes": 2048}],
        }
    )
    assert DESCRIPTORS["backend"].value(o) == 2
    assert DESCRIPTORS["n_regs"].value(o) == 40
    assert DESCRIPTORS["shared_bytes"].value(o) == 2048


def test_out_of_range_values_are_clipped():
    o = outcome({"kernel_count": 40, "n_regs": 300})
    assert DESCRIPTORS["kernel_count"].measure(o) == 16
    assert DESCRIPTORS["n_regs"].measure(o) == 256
    nan = outcome({"floor_fraction": math.nan})
    assert DESCRIPTORS["floor_fraction"].value(nan) is None


def test_default_dims_per_device():
    assert default_dims("cuda") == ["occupancy", "kernel_count"]
    assert default_dims("cpu") == ["block_size", "num_warps_param"]
    for device in ("cuda", "cpu"):
        for name in default_dims(device):
            assert DESCRIPTORS[name].applies_to(device)
    with pytest.raises(ValueError, match="unknown device"):
        default_dims("tpu")


def test_parse_dims_reads_names_and_bins():
    dims = parse_dims("occupancy:8, kernel_count:4")
    assert [(d.name, b) for d, b in dims] == [("occupancy", 8), ("kernel_count", 4)]
    ((d, b),) = parse_dims("tensor_cores")
    assert b == d.bins == 2
    assert len(parse_dims("occupancy,kernel_count,tensor_cores")) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("occupancy:8,warp_fun:4", "unknown descriptor 'warp_fun'; known descriptors: backend"),
        ("occupancy:x", "must be an integer"),
        ("occupancy:0", "between 1 and 1000"),
        ("occupancy:2000", "between 1 and 1000"),
        ("", "1 to 3"),
        ("occupancy,kernel_count,tensor_cores,n_regs", "1 to 3"),
        ("occupancy:4,occupancy:8", "given twice"),
    ],
)
def test_parse_dims_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_dims(text)


def test_parse_dims_refuses_measured_descriptors_on_cpu():
    with pytest.raises(ValueError, match="no information on cpu; usable there: backend"):
        parse_dims("occupancy", device="cpu")
    assert parse_dims("block_size", device="cpu")


# -- parameter descriptors (param:NAME=C1/C2/...) ---------------------------------------------

MATMUL_TILED = {"CONFIG": list(range(8))}
MATMUL_SPLIT = {"CONFIG": [0, 1, 2, 3], "SPLIT_K": [16, 4, 8, 32, 64]}


def test_cpu_defaults_spread_a_family_without_block_or_warps_parameters():
    dims = default_dims("cpu", [None, MATMUL_TILED, MATMUL_SPLIT])
    assert dims == ["param:CONFIG=0/1/2/3/4/5/6/7", "param:SPLIT_K=4/8/16/32/64"]
    assert default_dims("cpu", [None, MATMUL_TILED]) == ["param:CONFIG=0/1/2/3/4/5/6/7"]
    # Families that block_size / num_warps_param already spread keep those defaults.
    softmax = {"BLOCK": [1024, 512], "num_warps": [4, 8]}
    rows = {"ROWS_PER_PROGRAM": [1, 2, 4], "num_warps": [16, 8, 32]}
    assert default_dims("cpu", [None, softmax, rows]) == ["block_size", "num_warps_param"]
    assert default_dims("cpu", [None]) == ["block_size", "num_warps_param"]
    # A space of one choice, or of values a name cannot hold, spreads nothing.
    assert default_dims("cpu", [{"X": [1]}, {"F": [(1, 2), (3, 4)]}]) == default_dims("cpu")
    # The GPU defaults do not depend on the seeds.
    assert default_dims("cuda", [MATMUL_SPLIT]) == ["occupancy", "kernel_count"]


def test_default_param_dims_pick_the_params_with_most_choices():
    spaces = [{"A": [1, 2], "B": ["fast", "slow", "exact"], "C": [8, 2, 4, 16]}, {"A": [3]}]
    # C has 4 choices; A (over both families: 1, 2, 3) ties B and is declared first.
    assert default_dims("cpu", spaces) == ["param:C=2/4/8/16", "param:A=1/2/3"]
    assert default_dims("cpu", spaces[:1]) == ["param:C=2/4/8/16", "param:B=fast/slow/exact"]


def test_every_matmul_schedule_gets_its_own_cell():
    dims = parse_dims(",".join(default_dims("cpu", [None, MATMUL_TILED, MATMUL_SPLIT])), "cpu")
    archive = MapArchive(dims)
    points = [{}] + [{"CONFIG": c} for c in MATMUL_TILED["CONFIG"]]
    points += [{"CONFIG": c, "SPLIT_K": s} for c in MATMUL_SPLIT["CONFIG"] for s in (4, 64)]
    cells = {archive.cell_of(archive.measures_of(outcome(params=p))) for p in points}
    assert len(cells) == len(points)
    old = MapArchive(parse_dims(",".join(default_dims("cpu")), "cpu"))
    assert len({old.cell_of(old.measures_of(outcome(params=p))) for p in points}) == 1


def test_param_descriptor_reads_the_rank_of_the_value():
    d = param_descriptor("SPLIT_K", [4, 8, 16])
    assert (d.name, d.low, d.high, d.bins, d.measured) == ("param:SPLIT_K", 0, 3, 4, False)
    assert d.applies_to("cpu") and d.applies_to("cuda")
    assert d.value(outcome(params={"SPLIT_K": 8})) == 2
    assert d.value(outcome(params={"SPLIT_K": 16.0})) == 3  # a float read back from JSON
    for params in ({}, {"SPLIT_K": 5}, {"SPLIT_K": "8"}):
        assert d.value(outcome(params=params)) is None
        assert d.measure(outcome(params=params)) == 0


def test_param_dims_round_trip_through_their_text():
    text = param_spec("MODE", ["fast", "slow", True, 0.5])
    assert text == "param:MODE=fast/slow/True/0.5"
    ((d, bins),) = parse_dims(text + ":3", device="cpu")
    assert (d.name, bins) == ("param:MODE", 3)
    assert d.value(outcome(params={"MODE": True})) == 3
    assert d.value(outcome(params={"MODE": 0.5})) == 4
    ((d, bins),) = parse_dims(text)
    assert bins == d.bins == 5
    with pytest.raises(ValueError, match="cannot be written"):
        param_spec("SHAPE", [(1, 2)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("param:CONFIG", "needs the parameter's choices.*param:CONFIG=1/2/4"),
        ("param:CONFIG=", "at least one choice"),
        ("param:2D=1/2", "not a Python identifier"),
        ("param:X=1/1", "lists a choice twice"),
        ("param:X=1/2:zero", "must be an integer"),
        ("param:X=1/2,param:X=3/4", "given twice"),
        ("warp_fun", "or param:NAME=C1/C2/... for a SEARCH_SPACE parameter"),
    ],
)
def test_param_dims_errors_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_dims(text)
