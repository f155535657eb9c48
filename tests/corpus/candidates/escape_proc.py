# Escape: look at the other processes of the host through /proc (pids, command lines, owners) and at
# the judge's own entry (its real pid substituted by the test), and report them (LOAD_ERROR).
# Expected: STATIC_REJECT; with the gate off LOAD_ERROR, and only the sandbox's own processes show.
import os

JUDGE = "__JUDGE_PID__"
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


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def processes():
    pids = sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)
    out = []
    for pid in pids[:12]:
        try:
            out.append(f"{pid}:{cmdline(pid)[:50]}")
        except OSError as e:
            out.append(f"{pid}:E{e.errno}")
    return f"{len(pids)};" + ";".join(out)


probe("self", lambda: f"{os.getpid()}/{os.getppid()}")
probe("procs", processes)
probe("judge", lambda: cmdline(JUDGE))
probe("judge_stat", lambda: os.stat(f"/proc/{JUDGE}").st_uid)
probe("sched", lambda: str(sorted(os.sched_getaffinity(int(JUDGE)))))
raise RuntimeError(report())
