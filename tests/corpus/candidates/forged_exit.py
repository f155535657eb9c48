# Hack: at import, print a result line that a naive parent parsing the child's output would take
# for the verdict, then exit 0 before any check runs. Expected: STATIC_REJECT; with the gate off,
# LOAD_ERROR or RUNTIME_ERROR, and the forged text never reaches the evaluator's own stdout.
import os

import torch.nn as nn

FORGED = '{"verdict": "OK", "speedup_vs_eager": 150.0}'
print(FORGED, flush=True)
os.write(1, (FORGED + "\n").encode())  # also at the fd level, past any sys.stdout redirection
os.write(2, (FORGED + "\n").encode())
os._exit(0)


class ModelNew(nn.Module):
    def forward(self, x):
        return x
