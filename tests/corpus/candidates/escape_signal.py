# Escape: signal or trace the judge and the zygote (their real host pids, substituted by the test)
# and read their memory, then report how each attempt ended (LOAD_ERROR). Expected: STATIC_REJECT;
# with the gate off LOAD_ERROR, every attempt failed, and the judge and the zygote live on.
import ctypes
import os
import signal

JUDGE = int("__JUDGE_PID__")
JUDGE_PGID = int("__JUDGE_PGID__")
ZYGOTE = int("__ZYGOTE_PID__")
R = {}
libc = ctypes.CDLL(None, use_errno=True)


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


def call(fn, *args):
    ctypes.set_errno(0)
    ret = fn(*args)
    if ret == -1:
        raise OSError(ctypes.get_errno(), fn.__name__)
    return f"returned {ret}"


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def vm_read(pid):
    buf = ctypes.create_string_buffer(64)
    local = IoVec(ctypes.cast(buf, ctypes.c_void_p), 64)
    remote = IoVec(0x400000, 64)
    return call(libc.process_vm_readv, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)


def proc_mem(pid):
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(0x400000)
        return f.read(16).hex()


probe("kill_judge", lambda: os.kill(JUDGE, signal.SIGTERM))
probe("kill_zygote", lambda: os.kill(ZYGOTE, signal.SIGKILL))
probe("killpg_judge", lambda: os.killpg(JUDGE_PGID, signal.SIGTERM))
probe("pidfd_judge", lambda: os.pidfd_open(JUDGE))
probe("ptrace_judge", lambda: call(libc.ptrace, 16, JUDGE, None, None))  # PTRACE_ATTACH
probe("ptrace_zygote", lambda: call(libc.ptrace, 16, ZYGOTE, None, None))
probe("seize_self", lambda: call(libc.ptrace, 0, 0, None, None))  # PTRACE_TRACEME
probe("vm_read_judge", lambda: vm_read(JUDGE))
probe("mem_judge", lambda: proc_mem(JUDGE))
raise RuntimeError(report())
