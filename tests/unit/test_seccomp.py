"""The seccomp compiler, checked against the host kernel: filters are loaded for real in a
forked child, which reports what its syscalls returned through a pipe.  A small classic-BPF
interpreter checks the 64-bit comparisons on many more values than the kernel runs allow."""

from __future__ import annotations

import ast
import ctypes
import errno
import mmap
import os
import random
import re
import resource
import signal
import struct
from collections.abc import Callable

import pytest

from agent import linux, seccomp
from agent.errors import SetupError
from agent.syscalls import OTHER_ARCH, X86_64_NUMBERS, X86_ONLY

libc = ctypes.CDLL(None, use_errno=True)
NR = X86_64_NUMBERS
X32 = seccomp.X32_BIT
QUERY = 0xFFFFFFFF  # personality(0xffffffff) only reads the persona; the kernel sees 32 bits

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 numbers")


def syscall(nr: int, *args: int) -> int:
    """A raw syscall: its result, or -errno."""
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    return -ctypes.get_errno() if ret == -1 else ret


def run(profile: dict | None, body: Callable[[], list[int]]) -> tuple[list[int], int]:
    """Load ``profile`` in a forked child (no_new_privs), run ``body`` there; (what it
    returned, the child's wait status).  Nothing but ``body`` runs between load and exit."""
    program, flags = seccomp.compile_filter(profile) if profile else (b"", 0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS would dump core
            linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
            if program:
                linux.seccomp_set_filter(program, flags)
            os.write(w, repr(body()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return (ast.literal_eval(data.decode()) if data else []), status


def calls(*specs: tuple[int, ...]) -> Callable[[], list[int]]:
    return lambda: [syscall(*spec) for spec in specs]


def oserror(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    return 0


def exited(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def killed_by_sigsys(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


# --- actions -------------------------------------------------------------------------------


def test_errno_rule_under_default_allow(tmp_path):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}
        ],
    }
    target = str(tmp_path / "d")
    vals, status = run(
        profile, lambda: [oserror(os.getcwd), oserror(lambda: os.mkdir(target)), os.getpid()]
    )
    assert vals[:2] == [42, 42] and vals[2] > 0 and exited(status)
    assert not os.path.exists(target)


def test_default_errno_with_minimal_allow_list():
    # Found by experiment: between loading the filter and os._exit, this child needs only
    # write (the report) and exit_group; everything else gets the default EPERM.
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["write", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
    }
    vals, status = run(profile, lambda: [oserror(os.getcwd), syscall(NR["getppid"])])
    assert vals == [errno.EPERM, -errno.EPERM] and exited(status)


def test_default_errno_ret_and_rule_without_errno_ret():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 99,
        "syscalls": [
            {"names": ["write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    vals, _ = run(profile, calls((NR["getppid"],), (NR["getpgid"], 0)))
    assert vals == [-errno.EPERM, -99]


@pytest.mark.parametrize("act", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_TRAP"])
def test_kill_and_trap_end_the_child_with_sigsys(act):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": act}],
    }
    vals, status = run(profile, calls((NR["getppid"],)))
    assert vals == [] and killed_by_sigsys(status)


def test_log_allows_and_trace_without_tracer_is_enosys():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
            {"names": ["getpgid"], "action": "SCMP_ACT_TRACE", "errnoRet": 3},
        ],
    }
    vals, _ = run(profile, calls((NR["getppid"],), (NR["getpgid"], 0)))
    assert vals == [os.getpid(), -errno.ENOSYS]


def test_install_and_flags():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7}],
    }
    assert seccomp.compile_filter(profile)[1] == 2 | 4
    full = dict(profile, flags=list(seccomp.FLAGS))
    assert seccomp.compile_filter(full)[1] == 1 | 2 | 4

    def body() -> list[int]:
        seccomp.install(full)  # stacked on the helper's own filter, TSYNC and all
        return [syscall(NR["getppid"])]

    vals, _ = run({"defaultAction": "SCMP_ACT_ALLOW"}, body)
    assert vals == [-7]


# --- argument conditions -------------------------------------------------------------------


def personality_profile(*conds: dict) -> dict:
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": list(conds)},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77},
        ],
    }


@pytest.mark.parametrize(
    "op,value,value2,arg,allowed",
    [
        ("SCMP_CMP_EQ", QUERY, 0, QUERY, True),
        ("SCMP_CMP_EQ", QUERY, 0, 8, False),
        ("SCMP_CMP_EQ", QUERY, 0, 1 << 32 | QUERY, False),  # the high word counts
        ("SCMP_CMP_NE", 8, 0, QUERY, True),
        ("SCMP_CMP_NE", QUERY, 0, QUERY, False),
        ("SCMP_CMP_GT", 5, 0, 6, True),
        ("SCMP_CMP_GT", 5, 0, 5, False),
        ("SCMP_CMP_GT", 6, 0, 1 << 32 | 5, True),
        ("SCMP_CMP_GE", 5, 0, 5, True),
        ("SCMP_CMP_GE", 5, 0, 4, False),
        ("SCMP_CMP_LT", 5, 0, 4, True),
        ("SCMP_CMP_LT", 5, 0, 1 << 32, False),
        ("SCMP_CMP_LE", 1 << 32, 0, QUERY, True),
        ("SCMP_CMP_LE", 1 << 32 | 5, 0, 1 << 32 | 6, False),
        ("SCMP_CMP_MASKED_EQ", 0xFF00, 0x0800, 0x0812, True),
        ("SCMP_CMP_MASKED_EQ", 0xFF00, 0x0800, 0x0912, False),
        # 64-bit masks: only the top byte is looked at
        ("SCMP_CMP_MASKED_EQ", 0xFF << 56, 0x01 << 56, 0x01 << 56 | QUERY, True),
        ("SCMP_CMP_MASKED_EQ", 0xFF << 56, 0x01 << 56, 0x02 << 56 | QUERY, False),
        ("SCMP_CMP_MASKED_EQ", 0xFF << 56 | 0xF, 0x01 << 56 | 0xF, 0x01 << 56 | QUERY, True),
        ("SCMP_CMP_MASKED_EQ", 0xFF << 56 | 0xF, 0x01 << 56 | 0xE, 0x01 << 56 | QUERY, False),
    ],
)
def test_argument_conditions(op, value, value2, arg, allowed):
    profile = personality_profile({"index": 0, "op": op, "value": value, "valueTwo": value2})
    vals, _ = run(profile, calls((NR["personality"], arg)))
    assert (vals[0] != -77) == allowed, vals


def test_conditions_of_a_rule_are_anded_and_first_rule_wins():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11,
             "args": [{"index": 0, "op": "SCMP_CMP_GE", "value": 100},
                      {"index": 0, "op": "SCMP_CMP_LE", "value": 200},
                      {"index": 1, "op": "SCMP_CMP_EQ", "value": 7}]},
            {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 12,
             "args": [{"index": 0, "op": "SCMP_CMP_GE", "value": 100}]},
            {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        ],
    }  # fmt: skip
    g = NR["getpgid"]
    vals, _ = run(profile, calls((g, 150, 7), (g, 150, 8), (g, 250, 7), (g, 0, 7)))
    assert vals == [-11, -12, -12, -13]


def test_rules_with_the_default_action_only_dropped_when_harmless():
    # An ALLOW rule under default ALLOW still shadows the later ERRNO rule.
    profile = personality_profile({"index": 0, "op": "SCMP_CMP_EQ", "value": QUERY})
    vals, _ = run(profile, calls((NR["personality"], QUERY), (NR["personality"], 1 << 33)))
    assert vals[0] >= 0 and vals[1] == -77
    # ... while a trailing rule with the default action compiles to nothing.
    base = {"defaultAction": "SCMP_ACT_ALLOW"}
    noop = dict(base, syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW"}])
    assert seccomp.compile_filter(noop) == seccomp.compile_filter(base)


# --- size ----------------------------------------------------------------------------------


def test_400_rules_and_far_jumps():
    # 400 conditional rules on one syscall, then one rule per x86_64 syscall: thousands of
    # instructions, so blocks are reached through BPF_JA.
    rules: list[dict] = [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": i + 1,
         "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": (i + 1) << 32 | QUERY}]}
        for i in range(400)
    ]  # fmt: skip
    rules += [{"names": [n], "action": "SCMP_ACT_ALLOW"} for n in sorted(NR) if n != "getppid"]
    rules.append({"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9})
    profile = {"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": rules}
    program, _ = seccomp.compile_filter(profile)
    assert 2000 < len(program) // 8 <= seccomp.BPF_MAXINSNS
    p = NR["personality"]
    vals, status = run(
        profile,
        calls(
            (p, 1 << 32 | QUERY), (p, 400 << 32 | QUERY), (p, 401 << 32 | QUERY), (NR["getppid"],)
        ),
    )
    assert vals[:2] == [-1, -400] and vals[2] >= 0 and vals[3] == -9 and exited(status)


def test_profile_over_4096_instructions_is_refused():
    rules = [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": i}]}
        for i in range(1000)
    ]  # fmt: skip
    with pytest.raises(SetupError) as err:
        seccomp.compile_filter({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
    assert err.value.pointer == "/linux/seccomp/syscalls"


def docker_like_profile() -> dict:
    """The shape of Docker's default profile as containerd passes it to a runtime: three
    arches, a long allow-list naming i386-only and other-arch syscalls too, personality and
    clone argument rules, clone3 refused with ENOSYS."""
    denied = {"acct", "add_key", "bpf", "clone", "clone3", "kexec_load", "keyctl", "mount",
              "personality", "ptrace", "reboot", "setns", "swapon", "umount2",
              "unshare"}  # fmt: skip
    names = sorted(set(NR) - denied) + sorted(X86_ONLY) + sorted(OTHER_ARCH)
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            *[
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]}
                for v in (0, 8, 0x20000, 0x20008, QUERY)
            ],
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ],
    }  # fmt: skip


def test_docker_like_profile():
    profile = docker_like_profile()
    assert {"_llseek", "chown32", "recv"} <= set(profile["syscalls"][0]["names"])
    program, flags = seccomp.compile_filter(profile)
    assert len(program) // 8 < seccomp.BPF_MAXINSNS and flags == 0
    p, minus_one = NR["personality"], 0xFFFFFFFFFFFFFFFF
    vals, status = run(
        profile,
        calls(
            (NR["getppid"],),
            (NR["clone3"], 0, 0),
            (p, QUERY),
            (p, 0x0400000),  # ADDR_COMPAT_LAYOUT: not on the list
            (NR["setns"], minus_one, 0),  # EBADF if it got through
            (NR["unshare"], 0),
        ),
    )
    assert vals[0] == os.getpid() and vals[1] == -errno.ENOSYS and vals[2] >= 0
    assert vals[3:] == [-errno.EPERM] * 3 and exited(status)


# --- other ABIs ----------------------------------------------------------------------------


def test_x32_numbers_follow_the_profile_only_when_listed():
    deny = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
            {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 6},
        ],
    }
    x32 = [(X32 | NR["getpid"],), (X32 | 514,), (X32 | NR["ioctl"],), (NR["getpid"],)]
    vals, _ = run(deny, calls(*x32))
    # not listed: refused with ENOSYS, since the default would let them through
    assert vals[:3] == [-errno.ENOSYS] * 3 and vals[3] == -5
    vals, _ = run(dict(deny, architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]), calls(*x32))
    # listed: x32's getpid and ioctl (514) hit the rules; 16 is no x32 syscall
    assert vals[:2] == [-5, -6] and vals[2] == -errno.ENOSYS
    allow = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 99,
        "syscalls": [{"names": ["write", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}],
    }
    vals, _ = run(allow, calls(*x32[:1]))
    assert vals == [-99]  # not listed: the default, which refuses


def test_x32_table_matches_the_headers():
    header = "/usr/include/x86_64-linux-gnu/asm/unistd_x32.h"
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed")
    with open(header) as f:
        x32 = {
            m[1]: int(m[2])
            for m in re.finditer(r"#define __NR_(\w+) \(__X32_SYSCALL_BIT \+ (\d+)\)", f.read())
        }
    ours = {n: seccomp.X32_OWN.get(n, nr) for n, nr in NR.items() if n not in seccomp.NOT_ON_X32}
    assert {n: x32.get(n) for n in ours} == ours


def i386_getpid() -> Callable[[], int]:
    """A function making getpid through int 0x80, the i386 ABI (AUDIT_ARCH_I386)."""
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"  # mov eax, 20; int 0x80; ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fn = ctypes.CFUNCTYPE(ctypes.c_int)(addr)
    return lambda: fn() if page else 0  # keeps the page alive


def test_i386_syscalls_get_the_bad_arch_action():
    getpid = i386_getpid()
    vals, status = run(None, lambda: [getpid(), os.getpid()])
    if not exited(status) or len(vals) != 2 or vals[0] != vals[1]:
        pytest.skip("this kernel has no IA32 emulation")
    deny = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}],
    }
    vals, _ = run(deny, lambda: [getpid(), syscall(NR["getpid"])])
    assert vals == [-errno.ENOSYS, -5]
    allow = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 99,
        "syscalls": [{"names": ["write", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}],
    }
    vals, _ = run(allow, lambda: [getpid(), syscall(NR["getpid"])])
    assert vals[0] == -99 and vals[1] > 0


# --- errors --------------------------------------------------------------------------------


def error_pointer(profile: dict) -> str:
    with pytest.raises(SetupError) as err:
        seccomp.compile_filter(profile)
    return err.value.pointer


def test_errors_name_the_field():
    allow = {"defaultAction": "SCMP_ACT_ALLOW"}

    def rules(*rs: dict) -> dict:
        return dict(allow, syscalls=[{"names": ["read"], "action": "SCMP_ACT_LOG"}, *rs])

    assert error_pointer({"defaultAction": "SCMP_ACT_NOTIFY"}) == "/linux/seccomp/defaultAction"
    assert error_pointer(dict(allow, defaultAction="SCMP_ACT_ERRNO", defaultErrnoRet=1 << 16)) == (
        "/linux/seccomp/defaultErrnoRet"
    )
    assert error_pointer(rules({"names": ["read"], "action": "SCMP_ACT_NOTIFY"})) == (
        "/linux/seccomp/syscalls/1/action"
    )
    assert error_pointer(
        rules({"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1})
    ) == ("/linux/seccomp/syscalls/1/errnoRet")
    bad_args = [
        ({"index": 0, "op": "SCMP_CMP_FOO", "value": 1}, "op"),
        ({"index": 6, "op": "SCMP_CMP_EQ", "value": 1}, "index"),
        ({"index": 0, "op": "SCMP_CMP_EQ", "value": 1 << 64}, "value"),
        ({"index": 0, "op": "SCMP_CMP_MASKED_EQ", "value": 1, "valueTwo": -1}, "valueTwo"),
    ]
    for cond, field in bad_args:
        # checked even where the rule would be dropped (same action as the default)
        rule = {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{}, cond]}
        rule["args"][0] = {"index": 1, "op": "SCMP_CMP_EQ", "value": 0}
        assert error_pointer(rules(rule)) == f"/linux/seccomp/syscalls/1/args/1/{field}"
    assert error_pointer(dict(allow, flags=["SECCOMP_FILTER_FLAG_TSYNC", "X"])) == (
        "/linux/seccomp/flags/1"
    )


def test_unknown_names_skipped_unless_strict():
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_LOG"},
            {"names": ["_llseek"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["recv"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["no_such_call", "read"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    lax, _ = seccomp.compile_filter(profile)
    only_read = dict(
        profile, syscalls=[profile["syscalls"][0], {"names": ["read"], "action": "SCMP_ACT_ERRNO"}]
    )
    assert lax == seccomp.compile_filter(only_read)[0]  # unknown names skipped, as runc does


# --- the same programs, interpreted --------------------------------------------------------


def interpret(
    program: bytes, nr: int, args: list[int], arch: int = seccomp.AUDIT_ARCH_X86_64
) -> int:
    """Run a classic-BPF seccomp program on one seccomp_data (only the opcodes we emit)."""
    data = struct.pack("<IIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    pc, a = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # BPF_ALU | BPF_AND | BPF_K
            a &= k
        elif code == 0x05:  # BPF_JMP | BPF_JA
            pc += k
        elif code in (0x15, 0x25, 0x35):  # BPF_JMP | BPF_JEQ, BPF_JGT, BPF_JGE | BPF_K
            hit = {0x15: a == k, 0x25: a > k, 0x35: a >= k}[code]
            pc += jt if hit else jf
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")


def test_64_bit_comparisons_on_random_values():
    rng = random.Random(1)
    truth = {
        "SCMP_CMP_EQ": lambda a, v, m: a == v,
        "SCMP_CMP_NE": lambda a, v, m: a != v,
        "SCMP_CMP_LT": lambda a, v, m: a < v,
        "SCMP_CMP_LE": lambda a, v, m: a <= v,
        "SCMP_CMP_GT": lambda a, v, m: a > v,
        "SCMP_CMP_GE": lambda a, v, m: a >= v,
        "SCMP_CMP_MASKED_EQ": lambda a, v, m: a & v == m,
    }

    def near(x: int) -> int:  # values sharing a word with x, to hit the equal-high paths
        pick = rng.randrange(4)
        hi, lo = x >> 32, x & 0xFFFFFFFF
        if pick == 0:
            return rng.getrandbits(64)
        if pick == 1:
            return hi << 32 | rng.getrandbits(32)
        if pick == 2:
            return rng.getrandbits(32) << 32 | lo
        return x

    for op, fn in truth.items():
        for _ in range(60):
            index = rng.randrange(6)
            value, value2 = rng.getrandbits(64), rng.getrandbits(64)
            if op == "SCMP_CMP_MASKED_EQ":
                value2 &= value
            cond = {"index": index, "op": op, "value": value, "valueTwo": value2}
            profile = {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "args": [cond]}],
            }
            program, _ = seccomp.compile_filter(profile)
            for _ in range(20):
                args = [rng.getrandbits(64) for _ in range(6)]
                args[index] = near(value2 if op == "SCMP_CMP_MASKED_EQ" else value)
                got = interpret(program, NR["ioctl"], args) != seccomp.RET["SCMP_ACT_ALLOW"]
                assert got == fn(args[index], value, value2), (cond, hex(args[index]))


def test_interpreted_dispatch_of_the_docker_like_profile():
    program, _ = seccomp.compile_filter(docker_like_profile())
    allow, eperm = seccomp.RET["SCMP_ACT_ALLOW"], seccomp.RET["SCMP_ACT_ERRNO"] | 1
    assert interpret(program, NR["openat"], [0] * 6) == allow
    assert interpret(program, X32 | NR["openat"], [0] * 6) == allow
    assert interpret(program, X32 | 512, [0] * 6) == allow  # x32 rt_sigaction
    assert interpret(program, NR["mount"], [0] * 6) == eperm
    assert interpret(program, X32 | NR["mount"], [0] * 6) == eperm
    assert interpret(program, 0xFFFFFFFF, [0] * 6) == eperm  # -1: the default
    assert interpret(program, 1000, [0] * 6) == eperm
    assert interpret(program, 20, [0] * 6, seccomp.AUDIT_ARCH_I386) == eperm
    assert interpret(program, NR["clone"], [0x11] + [0] * 5) == allow
    assert interpret(program, NR["clone"], [0x10000000] + [0] * 5) == eperm  # CLONE_NEWUSER
