# Escape: list host directories and hand the listings back in the error message (LOAD_ERROR). A
# template: the test substitutes DIRS ("alias=/path;alias=/path"; "@here" is the candidate's own
# directory). Expected: STATIC_REJECT; with the gate off LOAD_ERROR, and the listings show only
# what the sandbox itself provides.
import os

DIRS = "__DIRS__"
R = {}


def probe(name, fn):
    try:
        value = fn()
        R[name] = "ok" if value is None else str(value)
    except OSError as e:
        R[name] = f"E{e.errno}" if e.errno else type(e).__name__
    except Exception as e:
        R[name] = type(e).__name__


def report():
    return "ESCAPE[" + "|".join(f"{k}={v.replace('|', '/').replace(']', ')')}" for k, v in R.items()) + "]"


HERE = os.path.dirname(os.path.abspath(__file__))
if "@here" in DIRS:
    R["herepath"] = HERE
for item in DIRS.split(";"):
    alias, _, path = item.partition("=")
    path = os.path.normpath(path.replace("@here", HERE))
    probe(alias, lambda path=path: ",".join(sorted(os.listdir(path))) or "-")
raise RuntimeError(report())
