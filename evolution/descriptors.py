"""Descriptor dimensions: where a candidate sits in the map, computed from its :class:`Outcome`.

A descriptor turns an evaluation's ``features`` (measured by the evaluator from the compiled
kernel and a profiler trace) or its declared ``params`` into one number. The registry
:data:`DESCRIPTORS` holds every known dimension; :func:`parse_dims` reads a user's choice such
as ``"occupancy:8,kernel_count:4"`` and :func:`default_dims` picks a sensible pair per device
(and, on the CPU, per seed family).

Measured descriptors exist only on a GPU. On the CPU nothing is measured from a kernel, so the
CPU defaults are parameter-based (``block_size``, ``num_warps_param``).

Parameter descriptors
---------------------
``param:NAME=C1/C2/...`` (:func:`param_descriptor`) places a candidate by its value of the
``SEARCH_SPACE`` parameter ``NAME``: 0 when it has none (the reference, another family), ``1 + i``
for the ``i``-th of the listed choices. It spreads a family whose parameters are neither a
``BLOCK*`` size nor ``num_warps`` (the matmul templates' ``CONFIG`` index and ``SPLIT_K``), which
``block_size`` and ``num_warps_param`` would put all in the reference's cell. The choices are
part of the name as stored in a run's configuration, so a resumed run (or a view of it) rebuilds
the same axis without the seeds; :func:`default_dims` writes them from the seeds' spaces.

Missing values
--------------
A descriptor whose input is absent (a plain-PyTorch candidate has no Triton registers, a failed
candidate has no profile) reads ``None`` from :meth:`Descriptor.value`; its archive coordinate
(:meth:`Descriptor.measure`) is then its ``low`` end, so such candidates share the first bin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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

# --- parameter descriptors (``param:NAME=C1/C2/...``) -----------------------------------------

PARAM_PREFIX = "param:"
MAX_PARAM_DIMS = 2  # how many param: dimensions default_dims picks
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _spreads_by_default(name: str) -> bool:
    """Whether ``block_size`` or ``num_warps_param`` reads the parameter ``name``."""
    return "BLOCK" in name.upper() or name == "num_warps"


def _decode_choice(text: str) -> Any:
    text = text.strip()
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def _encode_choice(value: Any) -> str | None:
    """The text of one choice in a ``param:`` name, or None when it cannot be written there."""
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        text = repr(value)
    elif isinstance(value, str) and _WORD.match(value) and value not in ("True", "False"):
        text = value
    else:
        return None
    back = _decode_choice(text)
    return text if type(back) is type(value) and back == value else None


def param_descriptor(name: str, choices: Sequence[Any]) -> Descriptor:
    """The descriptor ``param:NAME``: a candidate's value of parameter ``name`` among ``choices``.

    ``name`` is a ``SEARCH_SPACE`` key (``SPLIT_K``), ``choices`` its values in axis order
    (``[4, 8, 16, 32, 64]``). Returns the descriptor ``param:NAME`` over ``[0, len(choices)]``
    with one bin per choice plus bin 0: ``1 + i`` for the ``i``-th choice, ``None`` (so ``low``)
    for a candidate without the parameter or with a value not listed. Raises ValueError when
    ``name`` is not an identifier or ``choices`` is empty or repeats a value.
    """
    if not _NAME.match(name):
        raise ValueError(f"parameter name {name!r} in 'param:{name}' is not a Python identifier")
    values = list(choices)
    if not values:
        raise ValueError(f"'param:{name}' needs at least one choice, e.g. param:{name}=1/2/4")
    if len({repr(v) for v in values}) != len(values):
        raise ValueError(f"'param:{name}' lists a choice twice: {values}")

    def read(o: Outcome) -> float | None:
        if name not in o.params:
            return None
        v = o.params[name]
        hits = [i for i, c in enumerate(values) if type(c) is type(v) and c == v]
        if not hits:
            hits = [i for i, c in enumerate(values) if c == v]  # 4.0 read back for 4
        return float(hits[0] + 1) if hits else None

    shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
    return Descriptor(
        f"{PARAM_PREFIX}{name}",
        f"{name} parameter (0: none; 1..{len(values)}: {shown})",
        0,
        len(values),
        len(values) + 1,
        False,
        _ANY,
        read,
    )


def param_spec(name: str, choices: Sequence[Any]) -> str:
    """The text ``param:NAME=C1/C2/...`` for :func:`parse_dims`; ValueError for a choice that
    cannot be written there (only numbers, booleans and plain words such as ``fast`` can)."""
    texts = [_encode_choice(c) for c in choices]
    if None in texts:
        bad = [c for c, s in zip(choices, texts, strict=True) if s is None]
        raise ValueError(f"choices {bad!r} of {name!r} cannot be written in 'param:{name}=...'")
    return f"{PARAM_PREFIX}{name}={'/'.join(texts)}"  # type: ignore[arg-type]


def _parse_param(item: str) -> tuple[Descriptor, str]:
    """``param:NAME=C1/C2/...[:BINS]`` as its descriptor and the bins text ('' if none)."""
    body, _, bins_text = item[len(PARAM_PREFIX) :].partition(":")
    name, eq, choices_text = body.partition("=")
    name = name.strip()
    if not eq:
        raise ValueError(
            f"descriptor '{PARAM_PREFIX}{name}' needs the parameter's choices, in axis order:"
            f" write {PARAM_PREFIX}{name}=1/2/4 with the values of {name} in the seeds'"
            " SEARCH_SPACE (left out, the dimensions are chosen from the seeds)"
        )
    choices = [_decode_choice(c) for c in choices_text.split("/") if c.strip()]
    return param_descriptor(name, choices), bins_text


def _ordered(values: list[Any]) -> list[Any]:
    """Numbers sorted ascending (the axis reads small to large); anything else as declared."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return values


def spreading_params(
    search_spaces: Iterable[Mapping[str, Sequence[Any]] | None], limit: int = MAX_PARAM_DIMS
) -> list[str]:
    """Up to ``limit`` ``param:`` dimensions for the seed families that ``block_size`` and
    ``num_warps_param`` cannot spread (declaring neither a ``BLOCK*`` parameter nor
    ``num_warps``).

    ``search_spaces`` are the seeds' ``SEARCH_SPACE`` dicts (None for a seed without one).
    Returns :func:`param_spec` texts for those families' parameters with the most choices (at
    least 2; ties in declaration order), each over the union of its values; empty when every
    family is spread already.
    """
    union: dict[str, list[Any]] = {}
    for space in search_spaces:
        if not space or any(_spreads_by_default(k) for k in space):
            continue
        for key, values in space.items():
            seen = union.setdefault(key, [])
            seen += [v for v in values if not any(type(v) is type(s) and v == s for s in seen)]
    usable = {
        k: _ordered(v)
        for k, v in union.items()
        if _NAME.match(k) and len(v) >= 2 and all(_encode_choice(c) is not None for c in v)
    }
    order = list(usable)
    best = sorted(usable, key=lambda k: (-len(usable[k]), order.index(k)))[:limit]
    return [param_spec(k, usable[k]) for k in best]


def default_dims(
    device: str, search_spaces: Iterable[Mapping[str, Sequence[Any]] | None] = ()
) -> list[str]:
    """Default descriptor dimensions for ``device`` (``cuda`` or ``cpu``), as :func:`parse_dims`
    items.

    On the GPU the measured ``occupancy`` and ``kernel_count``. On the CPU ``block_size`` and
    ``num_warps_param``, unless some seed family in ``search_spaces`` (the seeds'
    ``SEARCH_SPACE`` dicts) declares neither a ``BLOCK*`` parameter nor ``num_warps``: its
    candidates would all share the reference's cell, so the dimensions are then up to two
    ``param:`` dimensions over that family's own parameters (:func:`spreading_params`).
    """
    try:
        dims = list(_DEFAULTS[device])
    except KeyError:
        known = ", ".join(sorted(_DEFAULTS))
        raise ValueError(f"unknown device {device!r}; expected one of: {known}") from None
    if device == "cpu":
        return spreading_params(search_spaces) or dims
    return dims


def parse_dims(
    text: str, device: str | None = None, registry: Mapping[str, Descriptor] | None = None
) -> list[tuple[Descriptor, int]]:
    """Read a dimension choice such as ``"occupancy:8,kernel_count:4"``.

    Parameters
    ----------
    text:
        1 to 3 comma-separated ``name`` or ``name:bins`` items; a bare name uses the
        descriptor's default bins. ``name`` is a registered descriptor or
        ``param:NAME=C1/C2/...`` (:func:`param_descriptor`).
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
        Unknown name (the message lists the known ones), a ``param:`` item without its
        choices, bins not an integer in ``1..1000``, a repeated name, or not 1 to 3 dimensions.
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
        if item.startswith(PARAM_PREFIX):
            d, bins_text = _parse_param(item)
            name = d.name
        else:
            name, _, bins_text = item.partition(":")
            name = name.strip()
            if name not in reg:
                raise ValueError(
                    f"unknown descriptor {name!r}; known descriptors: {', '.join(sorted(reg))},"
                    f" or {PARAM_PREFIX}NAME=C1/C2/... for a SEARCH_SPACE parameter"
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
