# Escape: kill the process that started the candidate (the judge's side), its process group and
# every process it may signal, at import. Expected: STATIC_REJECT; with the gate off the candidate
# only kills itself (LOAD_ERROR) or nothing (the kill calls fail: LOAD_ERROR as it then raises),
# and the judge, the zygote and the next candidate are fine.
import os
import signal

ppid = os.getppid()
errors = []
# kill(-1) only as an unprivileged user: as root outside a PID namespace (a broken sandbox) it would
# take down every process of the host.
for target in (ppid, -os.getpgid(0)) + ((-1,) if os.getuid() != 0 else ()):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError as e:
        errors.append(f"{target}:E{e.errno}")
raise RuntimeError(f"ESCAPE[ppid={ppid}|errors={','.join(errors)}]")
