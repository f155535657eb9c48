"""Deterministic input sets and parameters, made identically by the judge and the candidate.

An input set is named by an :class:`InputSpec` (seed, distribution, shape generator). The
judge draws the seeds secretly and sends a spec only when it asks for a call, so a candidate
cannot prepare for its inputs. Both processes run the same generator on the same device,
so the judge knows the inputs without receiving them and the outputs never exist in the
candidate process before it computes them.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from types import ModuleType
from typing import Any

import torch

DISTRIBUTIONS = ("task", "normal", "uniform_shifted", "heavy_tailed")
GUARD_BYTES = 4096
DRAW_CHUNK = 1 << 20  # elements per step of a multi-tensor draw


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Names one input set: the task's generator (``shape`` indexes ``SHAPES``) and a seed."""

    seed: int
    dist: str = "task"
    shape: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Wire form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(seed=int(d["seed"]), dist=str(d["dist"]), shape=d.get("shape"))


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def generate(task: ModuleType, spec: InputSpec, device: torch.device) -> list[Any]:
    """The input list of ``spec`` on ``device`` (tensors made there, not copied from the CPU)."""
    fn = task.get_inputs if spec.shape is None else task.SHAPES[spec.shape]
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(spec.seed)
        with torch.device(device):
            xs = list(fn())
    xs = [x.to(device) if isinstance(x, torch.Tensor) else x for x in xs]
    if spec.dist != "task":
        for i, x in enumerate(xs):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                shape, dtype = x.shape, x.dtype
                xs[i] = x = None  # the task's draw is freed before the new one is made
                xs[i] = _redraw(shape, dtype, spec, i, device)
    return xs


def _redraw(
    shape: torch.Size, dtype: torch.dtype, spec: InputSpec, i: int, device: torch.device
) -> torch.Tensor:
    """A floating tensor of ``shape``/``dtype`` drawn from ``spec.dist``.

    Made in place, chunk by chunk where a draw needs more than one random tensor: inputs
    reach gigabytes, and every temporary of full size is one more copy of them.
    """
    py = random.Random(spec.seed * 1000003 + i)
    g = torch.Generator(device=device)
    g.manual_seed((spec.seed * 7919 + i) % (1 << 62))
    kw = {"generator": g, "device": device, "dtype": torch.float32}
    if spec.dist == "normal":
        v = torch.randn(shape, **kw)
    elif spec.dist == "uniform_shifted":
        lo = py.uniform(-3.0, 1.0)
        v = torch.rand(shape, **kw).mul_(py.uniform(0.5, 5.0)).add_(lo)
    elif spec.dist == "heavy_tailed":
        v = torch.randn(shape, **kw)
        flat = v.view(-1)
        for start in range(0, flat.numel(), DRAW_CHUNK):
            part = flat[start : start + DRAW_CHUNK]
            part.mul_(torch.randn(part.shape, **kw).mul_(0.75).exp_())
            outliers = torch.rand(part.shape, **kw) < 0.01
            part.masked_scatter_(outliers, part.masked_select(outliers).mul_(50.0))
    else:
        raise ValueError(f"unknown input distribution {spec.dist!r}")
    return v.to(dtype)


def _fill_value(dtype: torch.dtype) -> Any:
    if dtype == torch.bool:
        return True
    return 1234.5 if dtype.is_floating_point or dtype.is_complex else 90


def guard_bytes_elems(t: torch.Tensor) -> int:
    """Elements of guard on each side of a guarded tensor (keeps 4 KiB alignment)."""
    return max(1, GUARD_BYTES // t.element_size())


def guarded(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy ``x`` into the middle of a buffer with canary guards on both sides.

    Returns ``(view, buffer)``: the candidate gets the contiguous ``view``; a write past
    either end lands in a guard, which :func:`guards_intact` detects (``OOB_WRITE``).
    """
    g = guard_bytes_elems(x)
    n = x.numel()
    buf = torch.full((n + 2 * g,), _fill_value(x.dtype), dtype=x.dtype, device=x.device)
    buf[g : g + n].copy_(x.reshape(-1))
    return buf[g : g + n].view(x.shape), buf


def unguard(buf: torch.Tensor, shape: torch.Size | list[int]) -> torch.Tensor:
    """The data part of a guarded buffer."""
    g = guard_bytes_elems(buf)
    return buf[g : buf.numel() - g].view(list(shape))


def guards_intact(buf: torch.Tensor) -> bool:
    """Whether both guards of a buffer still hold the canary."""
    g = guard_bytes_elems(buf)
    fill = torch.full((g,), _fill_value(buf.dtype), dtype=buf.dtype, device=buf.device)
    return bool(torch.equal(buf[:g], fill) and torch.equal(buf[buf.numel() - g :], fill))


def _name_seed(seed: int, name: str) -> int:
    return (seed * 1000003 + zlib.crc32(name.encode())) % (1 << 62)


@torch.no_grad()
def reseed_parameters(model: torch.nn.Module, seed: int) -> None:
    """Re-randomise every floating parameter and buffer of ``model`` deterministically.

    Defaults such as LayerNorm's weight=1 / bias=0 would let a kernel that ignores them pass,
    so each tensor gets fresh values of a similar scale: ``mean + std * N(0, 1)``, with a
    spread of a quarter of its magnitude where the default is constant. Tensors whose name
    says they are variances, or that were all positive, stay positive.
    """
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t is None or not t.is_floating_point() or t.numel() == 0:
            continue
        g = torch.Generator().manual_seed(_name_seed(seed, name))
        ref = t.detach().float().cpu()
        mean = float(ref.mean())
        std = float(ref.std()) if ref.numel() > 1 else 0.0
        if not std > 1e-12:
            std = 0.25 * max(abs(mean), 1.0)
        new = torch.randn(ref.shape, generator=g) * std + mean
        if "var" in name.rsplit(".", 1)[-1] or bool((ref > 0).all()):
            new = new.abs() + 0.05 * max(abs(mean), 1e-3)
        t.copy_(new.to(t.dtype))


def floating_dtype(xs: list[Any]) -> torch.dtype:
    """The task's working dtype: that of its first floating input (float32 if none)."""
    for x in xs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.dtype
    return torch.float32


def nbytes(xs: Any) -> int:
    """Bytes held by the tensors in a (nested) list or tuple."""
    if isinstance(xs, torch.Tensor):
        return xs.numel() * xs.element_size()
    if isinstance(xs, (list, tuple)):
        return sum(nbytes(x) for x in xs)
    return 0


def build_reference(
    task: ModuleType, init_seed: int, param_seed: int, device: torch.device
) -> tuple[list[Any], torch.nn.Module]:
    """``(init_inputs, model)``: the reference built and re-randomised identically everywhere."""
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(init_seed)
        init = list(task.get_init_inputs())
        with torch.device(device):
            model = task.Model(*init)
    model = model.to(device).eval()
    reseed_parameters(model, param_seed)
    return init, model
