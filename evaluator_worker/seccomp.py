"""A seccomp-BPF syscall filter for the sandboxed child that runs untrusted kernel code.

Pure ctypes (no libseccomp). The filter kills the process on a foreign syscall ABI, refuses
a fixed list of privileged or kernel-attack-surface syscalls with ``EPERM``, refuses ``clone``
only when it asks for a new namespace (threads, fork and subprocess keep working), answers
``clone3`` with ``ENOSYS`` (its flags live in memory a filter cannot read; glibc then falls
back to ``clone``), and allows ``socket`` only for the permitted address families (others get
``EACCES``). Everything else is allowed: this narrows the kernel surface, it is no allowlist.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable, Sequence

DENIED: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "iopl", "ioperm", "open_by_handle_at", "name_to_handle_at", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init", "kcmp", "pidfd_getfd", "quotactl",
    "lookup_dcookie", "move_mount", "open_tree", "fsopen", "fsmount", "fspick", "mount_setattr",
    "syslog",
    # Not refused outright: glibc, Python and sanitizers query it with personality(0xffffffff).
    # Only the query and PER_LINUX (0) are allowed, as in Docker's default profile.
    "personality",
)  # fmt: skip

# The namespace flags of clone(2); all of them lie in the low 32 bits of the flags argument.
CLONE_NS_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)
PERSONALITY_ALLOWED = (0x0, 0xFFFFFFFF)

# From arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h.
_X86_64: dict[str, int] = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165,
    "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "bpf": 321,
    "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "settimeofday": 164,
    "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "iopl": 172, "ioperm": 173,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "fanotify_init": 300, "kcmp": 312, "pidfd_getfd": 438, "quotactl": 179, "syslog": 103,
    "lookup_dcookie": 212, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "personality": 135, "clone": 56, "clone3": 435,
    "socket": 41, "socketpair": 53, "seccomp": 317,
}  # fmt: skip
_AARCH64: dict[str, int] = {
    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40,
    "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268, "bpf": 280,
    "perf_event_open": 241, "keyctl": 219, "add_key": 217, "request_key": 218, "kexec_load": 104,
    "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
    "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89, "settimeofday": 170,
    "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
    "open_by_handle_at": 265, "name_to_handle_at": 264, "userfaultfd": 282,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "fanotify_init": 262, "kcmp": 272, "pidfd_getfd": 438, "quotactl": 60, "syslog": 116,
    "lookup_dcookie": 18, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "personality": 92, "clone": 220, "clone3": 435,
    "socket": 198, "socketpair": 199, "seccomp": 277,
}  # fmt: skip
# arch name -> (AUDIT_ARCH_* value, syscall table)
_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, _X86_64),
    "aarch64": (0xC00000B7, _AARCH64),
}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
_KNOWN = frozenset(_X86_64) | frozenset(_AARCH64)

# Classic BPF opcodes and seccomp return actions.
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_RET_K = 0x06
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
# Offsets into struct seccomp_data (little-endian: the low word of args[0] is at 16).
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO = 0, 4, 16
_X32_SYSCALL_BIT = 0x40000000

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 38, 22
_SECCOMP_MODE_FILTER, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC = 2, 1, 1

Insn = tuple[int, int, int, int]


class SeccompUnavailable(RuntimeError):
    """The filter cannot be built for this arch, or the kernel refused to install it."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _arch_name(arch: str | None) -> str:
    name = (arch or platform.machine()).lower()
    name = _ALIASES.get(name, name)
    if name not in _ARCHES:
        raise SeccompUnavailable(f"no seccomp syscall table for arch {name!r}")
    return name


def syscall_number(name: str, arch: str | None = None) -> int:
    """The syscall number of ``name`` on ``arch`` (the running arch when None)."""
    table = _ARCHES[_arch_name(arch)][1]
    if name not in table:
        raise SeccompUnavailable(f"syscall {name!r} is unknown on this arch")
    return table[name]


def _ret(action: int, value: int = 0) -> Insn:
    return (_RET_K, 0, 0, action | value)


def _guarded(nr: int, block: list[Insn]) -> list[Insn]:
    """``block`` runs only when the syscall number (in A) is ``nr``; it must always return."""
    if len(block) > 255:
        raise SeccompUnavailable("filter block too long for a short BPF jump")
    return [(_JEQ_K, 0, len(block), nr), *block]


def _arg0_allowlist(values: Sequence[int], err: int) -> list[Insn]:
    """Allow when the low word of args[0] is one of ``values``, else fail with ``err``."""
    n = len(values)
    checks = [(_JEQ_K, n - i, 0, v & 0xFFFFFFFF) for i, v in enumerate(values)]
    return [
        (_LD_W_ABS, 0, 0, _OFF_ARG0_LO),
        *checks,
        _ret(RET_ERRNO, err),
        _ret(RET_ALLOW),
    ]


def _clone_rule() -> list[Insn]:
    return [
        (_LD_W_ABS, 0, 0, _OFF_ARG0_LO),
        (_JSET_K, 0, 1, CLONE_NS_FLAGS),
        _ret(RET_ERRNO, errno.EPERM),
        _ret(RET_ALLOW),
    ]


def _program(name: str, denied: Iterable[str], families: Sequence[int]) -> list[Insn]:
    audit_arch, table = _ARCHES[name]
    prog: list[Insn] = [
        (_LD_W_ABS, 0, 0, _OFF_ARCH),
        (_JEQ_K, 1, 0, audit_arch),
        _ret(RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if name == "x86_64":
        prog += [(_JGE_K, 0, 1, _X32_SYSCALL_BIT), _ret(RET_ERRNO, errno.EPERM)]
    for sys in dict.fromkeys(denied):
        if sys not in _KNOWN:
            raise SeccompUnavailable(f"unknown syscall name {sys!r}")
        if sys == "personality":
            prog += _guarded(table[sys], _arg0_allowlist(PERSONALITY_ALLOWED, errno.EPERM))
        elif sys in table:  # names absent on this arch (iopl, ioperm) are skipped
            prog += _guarded(table[sys], [_ret(RET_ERRNO, errno.EPERM)])
    prog += _guarded(table["clone3"], [_ret(RET_ERRNO, errno.ENOSYS)])
    prog += _guarded(table["clone"], _clone_rule())
    prog += _guarded(table["socket"], _arg0_allowlist(families, errno.EACCES))
    return [*prog, _ret(RET_ALLOW)]


def build(
    denied: Iterable[str] = DENIED,
    allowed_families: Sequence[int] = (1,),
    arch: str | None = None,
) -> bytes:
    """The filter as a packed ``struct sock_filter`` array for ``arch`` (None: this machine)."""
    prog = _program(_arch_name(arch), denied, allowed_families)
    return b"".join(struct.pack("<HBBI", *insn) for insn in prog)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _refused(what: str) -> SeccompUnavailable:
    err = ctypes.get_errno()
    return SeccompUnavailable(f"{what} failed: {os.strerror(err)} (errno {err})")


def install(denied: Iterable[str] = DENIED, allowed_families: Sequence[int] = (1,)) -> None:
    """Set no_new_privs and install the filter on every thread of this process (irreversible)."""
    code = build(denied, allowed_families)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = _libc()
    ulong = ctypes.c_ulong
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        raise _refused("prctl(PR_SET_NO_NEW_PRIVS)")
    ret = libc.syscall(
        ctypes.c_long(syscall_number("seccomp")),
        ulong(_SECCOMP_SET_MODE_FILTER),
        ulong(_SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog),
    )
    if ret == 0:
        return
    if ret > 0:  # TSYNC: the id of a thread that could not be synchronised
        raise SeccompUnavailable(f"seccomp TSYNC failed: thread {ret} cannot take the filter")
    if ctypes.get_errno() != errno.ENOSYS:
        raise _refused("seccomp(SECCOMP_SET_MODE_FILTER)")
    if libc.prctl(_PR_SET_SECCOMP, ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog)) != 0:
        raise _refused("prctl(PR_SET_SECCOMP)")


def available() -> str | None:
    """None when this host can install the filter (tried in a forked child), else the reason."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        code = 0
        try:
            install()
        except Exception as e:  # any failure is the reason we report
            os.write(write_fd, str(e).encode()[:4000])
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        reason = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return reason or f"filter test child ended with status {status}"
