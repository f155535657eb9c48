# Probe candidate: the output tensor's memory is owned by CuPy (allocated from CuPy's pool and
# wrapped with torch.as_tensor), not by torch's caching allocator, so CUDA IPC of the output
# cannot use torch's handle; the evaluator must still get the values back. Expected: OK.
import cupy as cp
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owned = cp.empty(tuple(x.shape), dtype=cp.float32)
        out = torch.as_tensor(owned, device=x.device)
        out.copy_(torch.relu(x))
        return out
