"""Messages between the judge and a candidate process: framed JSON plus raw tensor bytes.

The candidate process is untrusted, so nothing it sends is unpickled: a message is a JSON
header and a list of byte blobs. Tensors travel as ``{"__tensor__": i, "dtype", "shape"}``
with their contiguous bytes in blob ``i`` (CPU), or as CUDA IPC handles (``"__cuda__"``) so
that gigabyte outputs are not copied through a pipe. Decoding checks every size and dtype
against a whitelist before building a tensor.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from typing import Any

import torch

_LEN = struct.Struct("!Q")
MAX_HEADER = 64 << 20

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "complex64": torch.complex64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Why tensors went as bytes although CUDA IPC was asked for (CuPy-owned memory, a host
# without IPC): the candidate process reports these to the judge.
IPC_FALLBACKS: list[str] = []


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed message, or closed the channel."""


class PeerTimeout(ProtocolError):
    """No complete message arrived before the deadline."""


class CudaHandleError(ProtocolError):
    """A CUDA IPC handle could not be opened (the message itself was read completely)."""


def dtype_name(dtype: torch.dtype) -> str:
    """Wire name of a dtype; raises ``ProtocolError`` for dtypes we do not carry."""
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ProtocolError(f"unsupported dtype {dtype}") from None


def encode(obj: Any, blobs: list[Any], cuda_ipc: bool = True) -> Any:
    """Turn ``obj`` into JSON-able data, appending tensor bytes to ``blobs``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.is_cuda and cuda_ipc:
            try:
                return {"__cuda__": _cuda_handle(t)}
            except Exception as e:  # memory torch cannot share (CuPy's, say): send bytes
                IPC_FALLBACKS.append(f"{type(e).__name__}: {e}"[:200])
        t = t.cpu().contiguous()
        # A view of the tensor's own memory: sent as it is, never copied into a bytes object.
        blobs.append(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
        return {"__tensor__": len(blobs) - 1, "dtype": dtype_name(t.dtype), "shape": list(t.shape)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(x, blobs, cuda_ipc) for x in obj]}
    if isinstance(obj, list):
        return [encode(x, blobs, cuda_ipc) for x in obj]
    if isinstance(obj, dict):
        return {str(k): encode(v, blobs, cuda_ipc) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ProtocolError(f"cannot send a {type(obj).__name__}")


def decode(obj: Any, blobs: list[bytes]) -> Any:
    """Inverse of :func:`encode`; validates shapes, dtypes and sizes."""
    if isinstance(obj, list):
        return [decode(x, blobs) for x in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return _decode_tensor(obj, blobs)
        if "__cuda__" in obj:
            return _open_cuda_handle(obj["__cuda__"])
        if "__tuple__" in obj:
            return tuple(decode(x, blobs) for x in obj["__tuple__"])
        return {k: decode(v, blobs) for k, v in obj.items()}
    return obj


def _shape(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and d >= 0 for d in value):
        raise ProtocolError(f"bad tensor shape {value!r}")
    return value


def _decode_tensor(obj: dict, blobs: list[bytes]) -> torch.Tensor:
    idx, name = obj.get("__tensor__"), obj.get("dtype")
    if not isinstance(idx, int) or not 0 <= idx < len(blobs) or name not in DTYPES:
        raise ProtocolError("bad tensor reference")
    shape, dtype = _shape(obj.get("shape")), DTYPES[name]
    n = 1
    for d in shape:
        n *= d
    data = blobs[idx]
    if len(data) != n * dtype.itemsize:
        raise ProtocolError(f"tensor bytes {len(data)} do not match shape {shape} of {name}")
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    if not isinstance(data, bytearray):
        data = bytearray(data)
    return torch.frombuffer(data, dtype=dtype).reshape(shape)


def _cuda_handle(t: torch.Tensor) -> dict[str, Any]:
    # The same fields torch.multiprocessing uses, as plain JSON data.
    storage = t.untyped_storage()
    (device, handle, size_bytes, offset_bytes, ref_handle, ref_offset, event_handle, sync) = (
        storage._share_cuda_()
    )
    b64 = lambda b: base64.b64encode(b).decode() if b else None  # noqa: E731
    return {
        "device": int(device),
        "handle": b64(handle),
        "size_bytes": int(size_bytes),
        "offset_bytes": int(offset_bytes),
        "ref_handle": b64(ref_handle),
        "ref_offset": int(ref_offset),
        "event_handle": b64(event_handle),
        "event_sync": bool(sync),
        "dtype": dtype_name(t.dtype),
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "storage_offset": int(t.storage_offset()),
    }


def _open_cuda_handle(h: dict[str, Any]) -> torch.Tensor:
    """Map a tensor of the candidate process; the judge clones it before trusting it."""
    try:
        dtype = DTYPES[h["dtype"]]
        shape, stride = _shape(h["shape"]), _shape(h["stride"])
        ints = [
            h[k] for k in ("device", "size_bytes", "offset_bytes", "ref_offset", "storage_offset")
        ]
        if not all(isinstance(i, int) and i >= 0 for i in ints) or len(stride) != len(shape):
            raise ProtocolError("bad CUDA handle fields")
        unb = lambda s: base64.b64decode(s) if s else b""  # noqa: E731
        storage = torch.UntypedStorage._new_shared_cuda(
            h["device"],
            unb(h["handle"]),
            h["size_bytes"],
            h["offset_bytes"],
            unb(h["ref_handle"]),
            h["ref_offset"],
            unb(h["event_handle"]),
            bool(h["event_sync"]),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CudaHandleError(f"bad CUDA handle: {e}") from e
    extent = h["storage_offset"] + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))
    if 0 not in shape and (extent + 1) * dtype.itemsize > storage.nbytes():
        raise ProtocolError("CUDA tensor view exceeds its storage")
    t = torch.empty(0, dtype=dtype, device=f"cuda:{h['device']}")
    return t.set_(storage, h["storage_offset"], shape, stride)


def send(sock: socket.socket, msg: dict[str, Any], cuda_ipc: bool = True) -> None:
    """Send one message: a JSON header and the tensor blobs it refers to."""
    blobs: list[Any] = []
    body = encode(msg, blobs, cuda_ipc)
    header = json.dumps({"body": body, "blobs": [len(b) for b in blobs]}).encode()
    sock.sendall(_LEN.pack(len(header)) + header)
    for b in blobs:
        sock.sendall(b)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout("timed out")
            sock.settimeout(left)
        try:
            k = sock.recv_into(view[got:], min(n - got, 1 << 24))
        except TimeoutError:
            raise PeerTimeout("timed out") from None
        except OSError as e:
            raise ProtocolError(f"channel broken: {e}") from e
        if k == 0:
            raise ProtocolError("the other process closed the channel")
        got += k
    return buf  # tensors are built on this buffer itself: no second copy of the bytes


def recv(sock: socket.socket, deadline: float | None = None, max_bytes: int = 1 << 36) -> Any:
    """Receive and decode one message; ``deadline`` is a ``time.monotonic()`` instant."""
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size, deadline))
    if n > MAX_HEADER:
        raise ProtocolError(f"header of {n} bytes is too large")
    try:
        header = json.loads(_recv_exact(sock, n, deadline))
        sizes = header["blobs"]
        body = header["body"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ProtocolError(f"malformed header: {type(e).__name__}") from e
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise ProtocolError("malformed blob sizes")
    if sum(sizes) > max_bytes:
        raise ProtocolError(f"message of {sum(sizes)} bytes exceeds the limit of {max_bytes}")
    blobs = [_recv_exact(sock, s, deadline) for s in sizes]
    try:
        return decode(body, blobs)
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError, IndexError) as e:
        raise ProtocolError(f"malformed message: {type(e).__name__}: {e}"[:300]) from e
