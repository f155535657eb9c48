"""Tests of the seccomp filter: its BPF program, and what a process can still do under it.

Every check that installs the filter runs in a forked child that reports over a pipe and
``os._exit``s, so the pytest process itself never carries the filter.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import pickle
import platform
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from evaluator_worker import seccomp

AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_X86_64 = 0xC000003E
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
EPERM_RET = seccomp.RET_ERRNO | errno.EPERM

libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture(scope="module")
def can_filter() -> None:
    """Skip where this host cannot install a seccomp filter."""
    reason = seccomp.available()
    if reason is not None:
        pytest.skip(f"seccomp unavailable: {reason}")


def after_install(check: Callable[[], Any], denied: Iterable[str] = seccomp.DENIED) -> Any:
    """What ``check()`` returns in a forked child that installed the filter first."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            seccomp.install(tuple(denied))
            payload: tuple[str, Any] = ("ok", check())
        except BaseException as e:  # report everything; the child must reach os._exit
            payload = ("error", repr(e))
        try:
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(pickle.dumps(payload))
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        pytest.fail(f"filtered child died without a report (status {status})")
    kind, value = pickle.loads(data)
    if kind == "error":
        pytest.fail(f"filtered child raised {value}")
    return value


def traceme() -> int:
    """ptrace(PTRACE_TRACEME); ptrace is variadic, so every argument is given its full width."""
    zero = ctypes.c_long(0)
    return libc.ptrace(zero, zero, zero, zero)


def errno_of(ret: int) -> int:
    """0 for a libc call that succeeded, else the errno it left."""
    return 0 if ret >= 0 else ctypes.get_errno()


def run_bpf(prog: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Interpret the classic-BPF subset the filter uses on one ``struct seccomp_data``."""
    data = struct.pack("<IIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = list(struct.iter_unpack("<HBBI", prog))
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # LD W ABS
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x06:  # RET K
            return k
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf


# --- the program, unit-tested without installing it -------------------------------------------


def test_aarch64_program_starts_with_the_arch_check() -> None:
    prog = seccomp.build(arch="aarch64")
    assert len(prog) % 8 == 0
    first, second, third = (struct.unpack_from("<HBBI", prog, 8 * i) for i in range(3))
    assert first == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert second == (0x15, 1, 0, AUDIT_ARCH_AARCH64)
    assert third == (0x06, 0, 0, seccomp.RET_KILL_PROCESS)


def test_aarch64_program_decisions() -> None:
    prog = seccomp.build(arch="aarch64")
    a64 = AUDIT_ARCH_AARCH64
    assert run_bpf(prog, 117, a64) == EPERM_RET  # ptrace
    assert run_bpf(prog, 97, a64) == EPERM_RET  # unshare
    assert run_bpf(prog, 172, a64) == seccomp.RET_ALLOW  # getpid
    assert run_bpf(prog, 220, a64, SIGCHLD) == seccomp.RET_ALLOW  # clone, fork-like
    assert run_bpf(prog, 220, a64, CLONE_NEWUSER | SIGCHLD) == EPERM_RET
    assert run_bpf(prog, 435, a64) == seccomp.RET_ERRNO | errno.ENOSYS  # clone3
    assert run_bpf(prog, 198, a64, socket.AF_UNIX) == seccomp.RET_ALLOW
    assert run_bpf(prog, 198, a64, socket.AF_INET) == seccomp.RET_ERRNO | errno.EACCES
    assert run_bpf(prog, 92, a64, 0xFFFFFFFF) == seccomp.RET_ALLOW  # personality query
    assert run_bpf(prog, 92, a64, 0x0040000) == EPERM_RET  # ADDR_NO_RANDOMIZE
    assert run_bpf(prog, 117, AUDIT_ARCH_X86_64) == seccomp.RET_KILL_PROCESS


def test_x86_64_program_rejects_x32_and_foreign_arches() -> None:
    prog = seccomp.build(arch="x86_64")
    assert run_bpf(prog, 39 | 0x40000000, AUDIT_ARCH_X86_64) == EPERM_RET  # x32 getpid
    assert run_bpf(prog, 39, AUDIT_ARCH_X86_64) == seccomp.RET_ALLOW
    assert run_bpf(prog, 39, 0x40000003) == seccomp.RET_KILL_PROCESS  # AUDIT_ARCH_I386


def test_long_deny_lists_use_only_short_jumps() -> None:
    names = [*seccomp.DENIED, *seccomp.DENIED, "clone", "socketpair"]
    prog = seccomp.build(denied=names, allowed_families=range(1, 40), arch="x86_64")
    short = seccomp.build(denied=(), allowed_families=range(1, 40), arch="x86_64")

    def longest_jump(code: bytes) -> int:
        return max(max(jt, jf) for _, jt, jf, _ in struct.iter_unpack("<HBBI", code))

    assert len(prog) > len(short) and longest_jump(prog) == longest_jump(short)
    assert run_bpf(prog, 53, AUDIT_ARCH_X86_64) == EPERM_RET  # socketpair, now denied
    assert run_bpf(prog, 41, AUDIT_ARCH_X86_64, 39) == seccomp.RET_ALLOW  # family 39


def test_unknown_names_and_arches_raise() -> None:
    with pytest.raises(seccomp.SeccompUnavailable, match="no_such_call"):
        seccomp.build(denied=("ptrace", "no_such_call"), arch="x86_64")
    with pytest.raises(seccomp.SeccompUnavailable):
        seccomp.build(arch="riscv64")
    seccomp.build(denied=("iopl", "ioperm"), arch="aarch64")  # x86-only names are skipped


# --- the filter installed in a forked child --------------------------------------------------


@pytest.mark.usefixtures("can_filter")
def test_privileged_calls_fail_with_eperm(tmp_path: Path) -> None:
    def check() -> dict[str, int]:
        return {
            "ptrace": errno_of(traceme()),  # PTRACE_TRACEME
            "unshare": errno_of(libc.unshare(CLONE_NEWNS)),
            "mount": errno_of(libc.mount(b"none", bytes(tmp_path), b"tmpfs", 0, None)),
            "process_vm_readv": errno_of(libc.process_vm_readv(os.getpid(), None, 0, None, 0, 0)),
            "personality": errno_of(libc.personality(0x0040000)),
        }

    assert after_install(check) == dict.fromkeys(
        ("ptrace", "unshare", "mount", "process_vm_readv", "personality"), errno.EPERM
    )


@pytest.mark.usefixtures("can_filter")
def test_clone_with_a_new_namespace_fails_with_eperm() -> None:
    def check() -> int:
        nr = ctypes.c_long(seccomp.syscall_number("clone"))
        zero = ctypes.c_ulong(0)
        ret = libc.syscall(nr, ctypes.c_ulong(CLONE_NEWUSER | SIGCHLD), zero, zero, zero, zero)
        if ret == 0:  # the filter let it through: this is the new child
            os._exit(0)
        if ret > 0:
            os.waitpid(ret, 0)
        return errno_of(ret)

    assert after_install(check) == errno.EPERM


@pytest.mark.usefixtures("can_filter")
def test_x32_abi_fails_with_eperm() -> None:
    if platform.machine() not in ("x86_64", "amd64"):
        pytest.skip("the x32 ABI exists only on x86_64")

    def check() -> int:
        return errno_of(libc.syscall(ctypes.c_long(39 | 0x40000000)))  # x32 getpid

    assert after_install(check) == errno.EPERM


@pytest.mark.usefixtures("can_filter")
def test_fork_threads_and_subprocess_still_work() -> None:
    def check() -> tuple[int, list[int], int, int]:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        seen: list[int] = []
        thread = threading.Thread(target=seen.append, args=(1,))
        thread.start()
        thread.join()
        true = subprocess.run(["/bin/true"], check=False).returncode
        return forked, seen, true, libc.personality(ctypes.c_uint(0xFFFFFFFF)) >= 0

    assert after_install(check) == (7, [1], 0, True)


@pytest.mark.usefixtures("can_filter")
def test_sockets_only_for_allowed_families() -> None:
    def check() -> tuple[int | None, bytes]:
        try:
            socket.socket(socket.AF_INET).close()
            inet_errno = None
        except PermissionError as e:
            inet_errno = e.errno
        socket.socket(socket.AF_UNIX).close()
        left, right = socket.socketpair()
        with left, right:
            left.sendall(b"ping")
            return inet_errno, right.recv(4)

    assert after_install(check) == (errno.EACCES, b"ping")


@pytest.mark.usefixtures("can_filter")
def test_file_writes_still_work(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"

    def check() -> str:
        target.write_text("written under seccomp")
        return target.read_text()

    assert after_install(check) == "written under seccomp"


@pytest.mark.usefixtures("can_filter")
def test_custom_deny_list_leaves_ptrace_allowed() -> None:
    def check() -> tuple[int, int]:
        return errno_of(libc.unshare(CLONE_NEWNS)), errno_of(traceme())

    assert after_install(check, denied=("unshare",)) == (errno.EPERM, 0)


@pytest.mark.usefixtures("can_filter")
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_still_works() -> None:
    def check() -> float:
        import torch

        return float(torch.ones(3).sum())

    assert after_install(check) == 3.0
