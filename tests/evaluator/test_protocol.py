"""The judge/candidate wire format: round trips, and refusal of malformed messages."""

from __future__ import annotations

import json
import socket
import struct

import pytest
import torch

from evaluator_worker import protocol


def _pair():
    return socket.socketpair()


def test_round_trip_of_nested_tensors():
    a, b = _pair()
    msg = {
        "outputs": [[torch.randn(3, 4), torch.arange(5)]],
        "t": (1, "x"),
        "none": None,
        "bf": torch.randn(2, 2).bfloat16(),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5),
    }
    protocol.send(a, msg)
    got = protocol.recv(b)
    assert torch.equal(got["outputs"][0][0], msg["outputs"][0][0])
    assert torch.equal(got["outputs"][0][1], msg["outputs"][0][1])
    assert got["t"] == (1, "x") and got["none"] is None
    assert got["bf"].dtype == torch.bfloat16 and torch.equal(got["bf"], msg["bf"])
    assert got["empty"].shape == (0, 3)
    assert got["scalar"].shape == () and float(got["scalar"]) == 2.5  # a loss is 0-dim


def _raw(sock, header: dict, blobs: list[bytes]) -> None:
    h = json.dumps(header).encode()
    sock.sendall(struct.pack("!Q", len(h)) + h + b"".join(blobs))


@pytest.mark.parametrize(
    "body,blobs,err",
    [
        ({"__tensor__": 0, "dtype": "float32", "shape": [3]}, [b"\0" * 8], "do not match"),
        ({"__tensor__": 0, "dtype": "object", "shape": [1]}, [b"\0" * 8], "bad tensor"),
        ({"__tensor__": 5, "dtype": "float32", "shape": [1]}, [b"\0" * 4], "bad tensor"),
        ({"__tensor__": 0, "dtype": "float32", "shape": [-1]}, [b"\0" * 4], "shape"),
    ],
)
def test_malformed_tensors_are_refused(body, blobs, err):
    a, b = _pair()
    _raw(a, {"body": body, "blobs": [len(x) for x in blobs]}, blobs)
    with pytest.raises(protocol.ProtocolError, match=err):
        protocol.recv(b)


def test_oversized_message_is_refused_before_reading_it():
    a, b = _pair()
    _raw(a, {"body": {}, "blobs": [1 << 40]}, [])
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.recv(b, max_bytes=1 << 20)


def test_closed_channel_and_deadline():
    a, b = _pair()
    a.close()
    with pytest.raises(protocol.ProtocolError, match="closed"):
        protocol.recv(b)
    c, d = _pair()
    import time

    with pytest.raises(protocol.PeerTimeout):
        protocol.recv(d, deadline=time.monotonic() + 0.2)
