# Hack: compute in bfloat16 (faster on tensor-core hardware) and cast back; the task is fp32 and does
# not allow reduced precision. Expected: INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.softmax(x.to(torch.bfloat16), dim=-1).to(x.dtype)
