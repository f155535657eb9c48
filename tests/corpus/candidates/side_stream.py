# Hack (GPU): do the work on a private CUDA stream and never join it, so events recorded on the
# default stream time only the launch. torch.cuda._sleep stands in for a kernel heavy enough that
# hiding it matters. Expected: STATIC_REJECT (stream creation); with the gate off, ASYNC_WORK
# (scored at the synced time) or INCORRECT (read before the stream finished).
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.stream = torch.cuda.Stream()

    def forward(self, x):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            torch.cuda._sleep(2_000_000)
            y = torch.softmax(x, dim=-1)
        return y
