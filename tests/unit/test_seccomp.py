"""The seccomp compiler, checked against the host kernel: filters are loaded for real in a
forked child, which reports what its syscalls returned."""

from __future__ import annotations

import ctypes
import errno
import os
import signal

import pytest

from agent import linux, seccomp
from agent.errors import SetupError

libc = ctypes.CDLL(None, use_errno=True)
NR = {"personality": 135, "getppid": 110, "getpgid": 121}


def in_child(profile: dict, calls: list[tuple[str, list[int]]]) -> tuple[list[int], int]:
    """Load the filter in a child, make raw syscalls; (their -errno or result, exit status)."""
    program, flags = seccomp.compile_filter(profile)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            linux.seccomp_set_filter(program, flags)
            results = []
            for name, args in calls:
                ret = libc.syscall(NR[name], *[ctypes.c_ulong(a) for a in args])
                results.append(-ctypes.get_errno() if ret == -1 else ret)
            os.write(w, (",".join(map(str, results)) + "\n").encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    vals = [int(x) for x in data.decode().strip().split(",") if x]
    return vals, status


def test_errno_rule_and_default_allow():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}],
    }
    vals, _ = in_child(profile, [("getppid", []), ("getpgid", [0])])
    assert vals[0] == -42 and vals[1] > 0


def test_default_errno_allow_list():
    basics = ["write", "exit", "exit_group", "rt_sigreturn", "rt_sigprocmask", "munmap",
              "close", "brk", "mmap", "futex", "getpgid"]  # fmt: skip
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": basics, "action": "SCMP_ACT_ALLOW"}],
    }
    vals, _ = in_child(profile, [("getppid", []), ("getpgid", [0])])
    assert vals[0] == -errno.EPERM and vals[1] > 0


@pytest.mark.parametrize(
    "op,value,value2,arg,allowed",
    [
        ("SCMP_CMP_EQ", 0xFFFFFFFF, 0, 0xFFFFFFFF, True),
        ("SCMP_CMP_EQ", 0xFFFFFFFF, 0, 8, False),
        ("SCMP_CMP_NE", 8, 0, 0xFFFFFFFF, True),
        ("SCMP_CMP_GT", 5, 0, 6, True),
        ("SCMP_CMP_GT", 5, 0, 5, False),
        ("SCMP_CMP_GE", 5, 0, 5, True),
        ("SCMP_CMP_LT", 5, 0, 4, True),
        ("SCMP_CMP_LT", 5, 0, 1 << 32, False),  # the high word decides
        ("SCMP_CMP_LE", 1 << 32, 0, 5, True),
        ("SCMP_CMP_MASKED_EQ", 0xFF00, 0x0800, 0x0812, True),
        ("SCMP_CMP_MASKED_EQ", 0xFF00, 0x0800, 0x0912, False),
    ],
)
def test_argument_conditions(op, value, value2, arg, allowed):
    # personality(0xffffffff) only queries; any other value would change it: the child's own
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "op": op, "value": value, "valueTwo": value2}]},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77},
        ],
    }  # fmt: skip
    vals, _ = in_child(profile, [("personality", [arg])])
    assert (vals[0] != -77) == allowed, vals


def test_kill_process():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}],
    }
    _, status = in_child(profile, [("getppid", [])])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_big_profile_with_foreign_names():
    from agent.syscalls import X86_64_NUMBERS

    names = sorted(X86_64_NUMBERS)
    rules = [{"names": [n], "action": "SCMP_ACT_ALLOW"} for n in names if n != "getppid"]
    rules += [{"names": ["_llseek", "chown32", "getppid"], "action": "SCMP_ACT_ERRNO",
               "errnoRet": 9}]  # fmt: skip
    profile = {"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": rules}
    program, _ = seccomp.compile_filter(profile)
    assert len(program) // 8 > 1000
    vals, status = in_child(profile, [("getppid", []), ("getpgid", [0])])
    assert vals[0] == -9 and vals[1] > 0 and os.WEXITSTATUS(status) == 0


def test_errors_name_the_field():
    with pytest.raises(SetupError) as err:
        seccomp.compile_filter({"defaultAction": "SCMP_ACT_NOTIFY"})
    assert err.value.pointer == "/linux/seccomp/defaultAction"
    with pytest.raises(SetupError) as err:
        seccomp.compile_filter({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "op": "SCMP_CMP_FOO", "value": 1}]}]})  # fmt: skip
    assert err.value.pointer == "/linux/seccomp/syscalls/0/args/0/op"
