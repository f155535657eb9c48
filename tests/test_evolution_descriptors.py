"""Descriptor dimensions: values from evaluator features and params, registry and parsing."""

from __future__ import annotations

import math

import pytest

from evolution.candidate import Outcome, outcome_from_result
from evolution.descriptors import (
    DESCRIPTORS,
    SM_SHARED_BYTES,
    default_dims,
    parse_dims,
    theoretical_occupancy,
)
from evolution.fakes import fake_result


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
