"""Descriptor dimensions: where a candidate sits in the map, computed from its :class:`Outcome`.

A descriptor turns an evaluation's ``features`` (measured by the evaluator from the compiled
kernel and a profiler trace) or its declared ``params`` into one number. The registry
:data:`DESCRIPTORS` holds every known dimension; :func:`parse_dims` reads a user's choice such
as ``"occupancy:8,kernel_count:4"`` and :func:`default_dims` picks a sensible pair per device.

Measured descriptors exist only on a GPU. On the CPU nothing is measured from a kernel, so the
CPU defaults are parameter-based (``block_size``, ``num_warps_param``).

Missing values
--------------
A descriptor whose input is absent (a plain-PyTorch candidate has no Triton registers, a failed
candidate has no profile) reads ``None`` from :meth:`Descriptor.value`; its archive coordinate
(:meth:`Descriptor.measure`) is then its ``low`` end, so such candidates share the first bin.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from evolution.candidate import Outcome

# Hopper (sm_90) per-SM limits used by the theoretical occupancy.
SM_REGISTERS = 65536
SM_SHARED_BYTES = 228 * 1024
SM_MAX_WARPS = 64
SM_MAX_BLOCKS = 32
_REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
_SHARED_ALLOC_UNIT = 128
_SHARED_RESERVED_PER_BLOCK = 1024  # the CUDA runtime reserves 1 KiB per block on sm_80+

MAX_DIMS = 3
MAX_BINS = 1000


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """One dimension of the map.

    Attributes
    ----------
    name:
        Identifier used on the command line (``occupancy``).
    label:
        Human label with units, for axes (``theoretical occupancy (fraction)``).
    low, high:
        The range mapped onto the bins; values outside are clipped into it.
    bins:
        Default number of bins.
    measured:
        True when the value comes from the compiled kernel or the profiler (GPU only), False
        when it is read from declared parameters or the source.
    devices:
        Devices (``"cuda"``, ``"cpu"``) on which the descriptor carries information.
    fn:
        ``fn(outcome) -> float | None``: the raw reading, None when missing.
    """

    name: str
    label: str
    low: float
    high: float
    bins: int
    measured: bool
    devices: tuple[str, ...]
    fn: Callable[[Outcome], float | None] = dataclasses.field(repr=False, compare=False)

    def value(self, outcome: Outcome) -> float | None:
        """The raw reading for ``outcome``, or None when its input is missing."""
        try:
            v = self.fn(outcome)
        except (TypeError, ValueError, KeyError):
            return None
        if v is None or not math.isfinite(v):
            return None
        return float(v)

    def measure(self, outcome: Outcome) -> float:
        """The archive coordinate: :meth:`value` clipped to ``[low, high]``, ``low`` if missing."""
        v = self.value(outcome)
        if v is None:
            return self.low
        return min(max(v, self.low), self.high)

    def applies_to(self, device: str) -> bool:
        """Whether the descriptor carries information on ``device`` (``cuda`` or ``cpu``)."""
        return device in self.devices


DESCRIPTORS: dict[str, Descriptor] = {}


def register(descriptor: Descriptor) -> Descriptor:
    """Add ``descriptor`` to :data:`DESCRIPTORS` (names are unique); returns it."""
    if descriptor.name in DESCRIPTORS:
        raise ValueError(f"descriptor {descriptor.name!r} is already registered")
    DESCRIPTORS[descriptor.name] = descriptor
    return descriptor


# --- readings ---------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, str):
        return None
    return float(x)


def _flag(name: str) -> Callable[[Outcome], float | None]:
    def read(o: Outcome) -> float | None:
        v = o.features.get(name)
        return None if v is None else float(bool(v))

    return read


def _feature(name: str) -> Callable[[Outcome], float | None]:
    return lambda o: _num(o.features.get(name))


def _cupy_max(o: Outcome, key: str) -> float | None:
    vals = [_num(k.get(key)) for k in o.features.get("cupy_kernels") or [] if isinstance(k, dict)]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def _n_regs(o: Outcome) -> float | None:
    v = _num(o.features.get("n_regs"))
    return v if v is not None else _cupy_max(o, "num_regs")


def _shared_bytes(o: Outcome) -> float | None:
    v = _num(o.features.get("shared_bytes"))
    return v if v is not None else _cupy_max(o, "shared_size_bytes")


def theoretical_occupancy(n_regs: int, shared_bytes: int, num_warps: int) -> float:
    """Theoretical occupancy of one kernel on a Hopper SM.

    Parameters
    ----------
    n_regs:
        Registers per thread (0: unknown, no register limit).
    shared_bytes:
        Shared memory per block in bytes.
    num_warps:
        Warps per block (threads per block / 32), at least 1.

    Returns
    -------
    float
        Resident warps over the SM's maximum (64), in ``[0, 1]``. 0 when one block does not
        fit at all (too many registers or too much shared memory).
    """
    num_warps = max(1, int(num_warps))
    limits = [SM_MAX_BLOCKS, SM_MAX_WARPS // num_warps]
    if n_regs > 0:
        regs_per_warp = math.ceil(n_regs * 32 / _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
        limits.append((SM_REGISTERS // regs_per_warp) // num_warps)
    if shared_bytes > 0:
        per_block = (
            math.ceil(shared_bytes / _SHARED_ALLOC_UNIT) * _SHARED_ALLOC_UNIT
            + _SHARED_RESERVED_PER_BLOCK
        )
        limits.append(SM_SHARED_BYTES // per_block)
    blocks = max(0, min(limits))
    return blocks * num_warps / SM_MAX_WARPS


def _occupancy(o: Outcome) -> float | None:
    warps = _num(o.features.get("num_warps"))
    if not warps:
        return None
    regs = _n_regs(o) or 0
    shared = _shared_bytes(o) or 0
    return theoretical_occupancy(int(regs), int(shared), int(warps))


def _vector_width(o: Outcome) -> float | None:
    v = o.features.get("vector_load_v4")
    return None if v is None else (4.0 if v else 1.0)


def _backend(o: Outcome) -> float | None:
    f = o.features
    if "uses_cupy" not in f and "uses_triton" not in f:
        return None
    if f.get("uses_cupy"):
        return 2.0
    return 1.0 if f.get("uses_triton") else 0.0


def _log2_pow2(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or x <= 0:
        return None
    if float(x) != int(x) or int(x) & (int(x) - 1):
        return None
    return float(int(x).bit_length() - 1)


def _block_size(o: Outcome) -> float | None:
    logs = [_log2_pow2(v) for k, v in o.params.items() if "BLOCK" in k.upper()]
    logs = [v for v in logs if v is not None]
    return max(logs) if logs else 0.0


def _num_warps_param(o: Outcome) -> float | None:
    v = _log2_pow2(o.params.get("num_warps"))
    return 0.0 if v is None else v


# --- the registry -----------------------------------------------------------------------------

_GPU = ("cuda",)
_ANY = ("cuda", "cpu")

for _d in (
    Descriptor("tensor_cores", "uses tensor cores (0/1)", 0, 1, 2, True, _GPU,
               _flag("tensor_cores")),
    Descriptor("occupancy", "theoretical occupancy (fraction of 64 warps/SM)", 0, 1, 8, True,
               _GPU, _occupancy),
    Descriptor("n_regs", "registers per thread", 0, 256, 8, True, _GPU, _n_regs),
    Descriptor("n_spills", "register spills", 0, 64, 4, True, _GPU, _feature("n_spills")),
    Descriptor("shared_bytes", "shared memory per block (bytes)", 0, SM_SHARED_BYTES, 8, True,
               _GPU, _shared_bytes),
    Descriptor("num_warps", "warps per block (log2, compiled)", 0, 5, 6, True, _GPU,
               lambda o: _log2_pow2(o.features.get("num_warps"))),
    Descriptor("num_stages", "software pipeline stages", 1, 8, 8, True, _GPU,
               _feature("num_stages")),
    Descriptor("vector_width", "global load vector width (1 or 4)", 1, 4, 2, True, _GPU,
               _vector_width),
    Descriptor("kernel_count", "kernels per forward", 1, 16, 16, True, _GPU,
               _feature("kernel_count")),
    Descriptor("floor_fraction", "speed-of-light floor / measured time", 0, 1, 10, True, _GPU,
               _feature("floor_fraction")),
    Descriptor("backend", "backend (0 torch, 1 triton, 2 cupy)", 0, 2, 3, False, _ANY,
               _backend),
    Descriptor("block_size", "largest BLOCK* parameter (log2)", 0, 16, 17, False, _ANY,
               _block_size),
    Descriptor("num_warps_param", "num_warps parameter (log2)", 0, 5, 6, False, _ANY,
               _num_warps_param),
):  # fmt: skip
    register(_d)

_DEFAULTS = {"cuda": ["occupancy", "kernel_count"], "cpu": ["block_size", "num_warps_param"]}


def default_dims(device: str) -> list[str]:
    """Default descriptor names for ``device`` (``cuda`` or ``cpu``)."""
    try:
        return list(_DEFAULTS[device])
    except KeyError:
        known = ", ".join(sorted(_DEFAULTS))
        raise ValueError(f"unknown device {device!r}; expected one of: {known}") from None


def parse_dims(
    text: str, device: str | None = None, registry: Mapping[str, Descriptor] | None = None
) -> list[tuple[Descriptor, int]]:
    """Read a dimension choice such as ``"occupancy:8,kernel_count:4"``.

    Parameters
    ----------
    text:
        1 to 3 comma-separated ``name`` or ``name:bins`` items; a bare name uses the
        descriptor's default bins.
    device:
        When given, refuse descriptors that carry no information there (measured ones on cpu).
    registry:
        Descriptors to choose from (default :data:`DESCRIPTORS`).

    Returns
    -------
    list of (Descriptor, int)
        The descriptors and their bin counts, in the order given.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones), bins not an integer in
        ``1..1000``, a repeated name, or not 1 to 3 dimensions.
    """
    reg = DESCRIPTORS if registry is None else registry
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not 1 <= len(items) <= MAX_DIMS:
        raise ValueError(
            f"expected 1 to {MAX_DIMS} descriptor dimensions, got {len(items)} in {text!r}"
            " (example: 'occupancy:8,kernel_count:4')"
        )
    out: list[tuple[Descriptor, int]] = []
    for item in items:
        name, _, bins_text = item.partition(":")
        name = name.strip()
        if name not in reg:
            raise ValueError(
                f"unknown descriptor {name!r}; known descriptors: {', '.join(sorted(reg))}"
            )
        d = reg[name]
        if bins_text.strip():
            try:
                bins = int(bins_text)
            except ValueError:
                raise ValueError(
                    f"bins for {name!r} must be an integer, got {bins_text.strip()!r}"
                ) from None
        else:
            bins = d.bins
        if not 1 <= bins <= MAX_BINS:
            raise ValueError(f"bins for {name!r} must be between 1 and {MAX_BINS}, got {bins}")
        if any(prev.name == name for prev, _ in out):
            raise ValueError(f"descriptor {name!r} is given twice in {text!r}")
        if device is not None and not d.applies_to(device):
            usable = ", ".join(sorted(n for n, x in reg.items() if x.applies_to(device)))
            raise ValueError(
                f"descriptor {name!r} is measured on {'/'.join(d.devices)} only and carries no"
                f" information on {device}; usable there: {usable}"
            )
        out.append((d, bins))
    return out
