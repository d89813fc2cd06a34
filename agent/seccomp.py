"""The OCI ``linux.seccomp`` profile compiled to a classic-BPF seccomp filter, in Python.

Written here rather than taken from libseccomp: the guest's initrd carries only Debian's
python3.11 and its standard library, and python3-seccomp would add libseccomp and its
binding to every boot for what is a few hundred lines of code generation (``struct`` only).

The program:

1. checks ``seccomp_data.arch``.  x86_64 is always filtered (libseccomp always includes the
   native arch).  x32 syscalls (x86_64 arch, ``nr & 0x40000000``) go through the rules with
   x32's own numbers when ``architectures`` lists SCMP_ARCH_X32.  Everything else -- x32
   when not listed, i386 (int 0x80; its numbering is not compiled in even if SCMP_ARCH_X86
   is listed: the guest kernel has no IA32 emulation, so it never happens there) and any
   other arch -- gets the "bad arch" action: ``defaultAction`` when that refuses the call
   (ERRNO, KILL*, TRAP), else ERRNO(ENOSYS).  libseccomp kills instead; we never let a
   syscall run under a numbering the profile's rules were not compiled for, so a deny-list
   profile cannot be sidestepped through another ABI;
2. dispatches on the syscall number.  A syscall whose rules reduce to one unconditional
   action returns it directly; otherwise a block evaluates its rules in profile order, the
   first rule whose conditions all hold (AND) wins (libseccomp orders by action instead).
   Arguments are compared as 64-bit values, high word first, then low.  Trailing rules
   with the default action, and rules after an unconditional one, are dropped: they
   cannot change the outcome;
3. falls through to ``defaultAction``.

Names x86_64 does not have (``_llseek``, ``chown32``...: Docker's default profile lists them
for every arch; podman's names other arches' too) are skipped, as runc skips names libseccomp
cannot resolve.  Conditional
jumps are all short by construction; long ones use ``BPF_JA`` (32-bit offsets), so profile
size is limited only by the kernel's 4096 instructions.
"""

from __future__ import annotations

import struct

from agent import linux
from agent.errors import SetupError
from agent.syscalls import X86_64_NUMBERS

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_BIT = 0x40000000
ENOSYS, EPERM = 38, 1
BPF_MAXINSNS = 4096

# x32 numbers (asm/unistd_x32.h): x86_64's plus X32_BIT, except these (their x86_64 entries
# are 64-bit-only ABI) and the names x32 lacks.  Kept by hand; to check them against the
# headers: parse "#define __NR_(\w+) \(__X32_SYSCALL_BIT \+ (\d+)\)" from unistd_x32.h and
# compare with X86_64_NUMBERS.
X32_OWN = dict(
    zip(
        "rt_sigaction rt_sigreturn ioctl readv writev recvfrom sendmsg recvmsg execve ptrace "
        "rt_sigpending rt_sigtimedwait rt_sigqueueinfo sigaltstack timer_create mq_notify "
        "kexec_load waitid set_robust_list get_robust_list vmsplice move_pages preadv pwritev "
        "rt_tgsigqueueinfo recvmmsg sendmmsg process_vm_readv process_vm_writev setsockopt "
        "getsockopt io_setup io_submit execveat preadv2 pwritev2".split(),
        range(512, 548),
        strict=True,
    )
)
NOT_ON_X32 = frozenset(
    "_sysctl create_module epoll_ctl_old epoll_wait_old get_kernel_syms get_thread_area "
    "nfsservctl query_module set_thread_area uselib vserver".split()
)

# classic BPF opcodes
LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
JA = 0x05  # BPF_JMP | BPF_JA: 32-bit offset in k
JEQ, JGT, JGE = 0x15, 0x25, 0x35  # BPF_JMP | BPF_J* | BPF_K: 8-bit jt/jf
RET_K = 0x06
# struct seccomp_data offsets
OFF_NR, OFF_ARCH, OFF_ARGS = 0, 4, 16

RET = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
# Actions under which the syscall may still run: never used for a foreign ABI.
_LETS_THROUGH = {RET["SCMP_ACT_TRACE"], RET["SCMP_ACT_LOG"], RET["SCMP_ACT_ALLOW"]}
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_U64 = 0xFFFFFFFFFFFFFFFF
_CHUNK = 200  # jeqs sharing one ret: keeps every conditional jump under 256


class _Asm:
    """Instructions whose jump targets may be labels, resolved by :meth:`assemble`."""

    def __init__(self, pointer: str) -> None:
        self.code: list[tuple[int, int | str, int | str, int, str]] = []
        self.labels: dict[str, int] = {}
        self.n = 0
        self.pointer = pointer  # the profile field being compiled, for errors

    def label(self) -> str:
        self.n += 1
        return f"L{self.n}"

    def place(self, label: str) -> None:
        self.labels[label] = len(self.code)

    def emit(self, op: int, k: int = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((op, jt, jf, k & 0xFFFFFFFF, self.pointer))

    def ja(self, target: str) -> None:
        self.emit(JA, 0, target)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (op, jt, jf, k, pointer) in enumerate(self.code):
            offs = [self.labels[t] - i - 1 if isinstance(t, str) else t for t in (jt, jf)]
            if op == JA:
                k, offs = offs[0], [0, 0]
            elif not all(0 <= off <= 255 for off in offs):
                raise SetupError("seccomp rule too long for a BPF conditional jump", pointer)
            out += struct.pack("<HBBI", op, offs[0], offs[1], k)
        return bytes(out)


def action(name: str, errno_ret: int | None, pointer: str, errno_pointer: str = "") -> int:
    """The SECCOMP_RET_* value of an OCI action; ERRNO defaults to EPERM, TRACE to 0."""
    if name == "SCMP_ACT_NOTIFY":
        raise SetupError("SCMP_ACT_NOTIFY is not supported by hyperpy", pointer)
    if name not in RET:
        raise SetupError(f"unknown seccomp action {name!r}", pointer)
    ret = RET[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        data = (EPERM if name == "SCMP_ACT_ERRNO" else 0) if errno_ret is None else errno_ret
        if not isinstance(data, int) or not 0 <= data <= 0xFFFF:
            raise SetupError(f"errno {data!r} is not 0..65535", errno_pointer or pointer)
        ret |= data
    return ret


def _u64(cond: dict, key: str, pointer: str) -> int:
    value = cond.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise SetupError(f"{key} {value!r} is not a 64-bit unsigned integer", f"{pointer}/{key}")
    return value


_OPS = {
    # op: (comparison, negated); the negation swaps the jump targets
    "SCMP_CMP_EQ": ("eq", False),
    "SCMP_CMP_NE": ("eq", True),
    "SCMP_CMP_GT": ("gt", False),
    "SCMP_CMP_LE": ("gt", True),
    "SCMP_CMP_GE": ("ge", False),
    "SCMP_CMP_LT": ("ge", True),
    "SCMP_CMP_MASKED_EQ": ("masked", False),
}
Cond = tuple[int, str, int, int, str]  # index, op, value, valueTwo, pointer


def _parse_condition(cond: dict, pointer: str) -> Cond:
    index = cond.get("index", 0)
    if not isinstance(index, int) or not 0 <= index <= 5:
        raise SetupError(f"argument index {index!r} is not 0..5", pointer + "/index")
    op = cond.get("op", "")
    if op not in _OPS:
        raise SetupError(f"unknown seccomp operator {op!r}", pointer + "/op")
    return index, op, _u64(cond, "value", pointer), _u64(cond, "valueTwo", pointer), pointer


def _condition(asm: _Asm, cond: Cond, fail: str) -> None:
    """Code that falls through when the 64-bit argument condition holds, else jumps to
    ``fail``."""
    index, op, value, value2, asm.pointer = cond
    v_hi, v_lo = value >> 32, value & 0xFFFFFFFF
    lo_off = OFF_ARGS + 8 * index  # little-endian: low word first
    hi_off = lo_off + 4
    ok = asm.label()
    kind, negated = _OPS[op]
    yes, no = (fail, ok) if negated else (ok, fail)
    asm.emit(LD_ABS, hi_off)
    if kind == "masked":
        asm.emit(AND_K, v_hi)
        asm.emit(JEQ, value2 >> 32, 0, no)
        asm.emit(LD_ABS, lo_off)
        asm.emit(AND_K, v_lo)
        asm.emit(JEQ, value2 & 0xFFFFFFFF, yes, no)
    elif kind == "eq":
        asm.emit(JEQ, v_hi, 0, no)
        asm.emit(LD_ABS, lo_off)
        asm.emit(JEQ, v_lo, yes, no)
    else:
        asm.emit(JGT, v_hi, yes, 0)  # high word bigger: greater whatever the low words
        asm.emit(JEQ, v_hi, 0, no)  # high word smaller
        asm.emit(LD_ABS, lo_off)
        asm.emit(JGT if kind == "gt" else JGE, v_lo, yes, no)
    asm.place(ok)


Rule = tuple[str, list[Cond], int]  # pointer of the rule, its conditions, return value


def _reduce(rules: list[Rule], default: int) -> list[Rule]:
    """Drop rules that cannot change the outcome under first-match semantics."""
    out: list[Rule] = []
    for rule in rules:
        out.append(rule)
        if not rule[1]:
            break  # unconditional: later rules are unreachable
    while out and out[-1][2] == default:
        out.pop()  # falling through gives the same
    return out


def _dispatch(asm: _Asm, numbers: dict[str, int], per_name: dict[str, list[Rule]],
              blocks: dict[str, str], default: int) -> None:  # fmt: skip
    """With A = syscall number: return or jump to the matching block; else ``default``."""
    direct: dict[int, list[int]] = {}  # return value -> syscall numbers
    for name, rules in per_name.items():
        if name not in numbers:
            continue
        if len(rules) == 1 and not rules[0][1]:
            direct.setdefault(rules[0][2], []).append(numbers[name])
        else:
            asm.emit(JEQ, numbers[name], 0, 1)
            asm.ja(blocks[name])
    for ret, nrs in direct.items():
        for start in range(0, len(nrs), _CHUNK):
            hit, after = asm.label(), asm.label()
            for nr in nrs[start : start + _CHUNK]:
                asm.emit(JEQ, nr, hit, 0)
            asm.ja(after)
            asm.place(hit)
            asm.emit(RET_K, ret)
            asm.place(after)
    asm.emit(RET_K, default)


def compile_filter(seccomp: dict, pointer: str = "/linux/seccomp") -> tuple[bytes, int]:
    """(program, seccomp(2) flags) for an OCI seccomp object. A syscall name x86_64 lacks
    (another arch's, or none's) is skipped, as runc skips names libseccomp cannot resolve."""
    default = action(
        seccomp.get("defaultAction", ""),
        seccomp.get("defaultErrnoRet"),
        pointer + "/defaultAction",
        pointer + "/defaultErrnoRet",
    )
    bad_arch = RET["SCMP_ACT_ERRNO"] | ENOSYS if default in _LETS_THROUGH else default
    flags = 0
    for i, name in enumerate(seccomp.get("flags") or []):
        if name not in FLAGS:
            raise SetupError(f"seccomp flag {name!r} is not supported", f"{pointer}/flags/{i}")
        flags |= FLAGS[name]
    with_x32 = "SCMP_ARCH_X32" in (seccomp.get("architectures") or [])

    per_name: dict[str, list[Rule]] = {}  # in profile order
    for i, rule in enumerate(seccomp.get("syscalls") or []):
        rp = f"{pointer}/syscalls/{i}"
        ret = action(rule.get("action", ""), rule.get("errnoRet"), rp + "/action", rp + "/errnoRet")
        conds = [
            _parse_condition(c, f"{rp}/args/{j}") for j, c in enumerate(rule.get("args") or [])
        ]
        for name in rule.get("names") or []:
            if name in X86_64_NUMBERS:
                per_name.setdefault(name, []).append((rp, conds, ret))
    per_name = {n: r for n, rules in per_name.items() if (r := _reduce(rules, default))}

    asm = _Asm(pointer)
    asm.emit(LD_ABS, OFF_ARCH)
    asm.emit(JEQ, AUDIT_ARCH_X86_64, 1, 0)
    asm.emit(RET_K, bad_arch)
    asm.emit(LD_ABS, OFF_NR)
    asm.emit(JGE, X32_BIT, 0, 3)
    asm.emit(JEQ, 0xFFFFFFFF, 0, 1)  # -1: a tracer skipping the call; the kernel says ENOSYS
    asm.emit(RET_K, default)
    x32 = asm.label()
    if with_x32:
        asm.ja(x32)
    else:
        asm.emit(RET_K, bad_arch)
    blocks = {name: asm.label() for name, rules in per_name.items()}
    _dispatch(asm, X86_64_NUMBERS, per_name, blocks, default)
    if with_x32:
        asm.place(x32)
        x32_numbers = {
            name: X32_BIT | X32_OWN.get(name, nr)
            for name, nr in X86_64_NUMBERS.items()
            if name not in NOT_ON_X32
        }
        _dispatch(asm, x32_numbers, per_name, blocks, default)
    for name, rules in per_name.items():
        if len(rules) == 1 and not rules[0][1]:
            continue  # returned directly by the dispatch
        asm.place(blocks[name])
        for rp, conds, ret in rules:
            next_rule = asm.label()
            for cond in conds:
                _condition(asm, cond, next_rule)
            asm.pointer = rp
            asm.emit(RET_K, ret)
            asm.place(next_rule)
        if rules[-1][1]:
            asm.emit(RET_K, default)
    asm.pointer = pointer
    if len(asm.code) > BPF_MAXINSNS:
        raise SetupError(f"seccomp profile compiles to {len(asm.code)} instructions, more than "
                         f"the kernel's {BPF_MAXINSNS}", pointer + "/syscalls")  # fmt: skip
    return asm.assemble(), flags


def load(program: bytes, flags: int, pointer: str = "/linux/seccomp") -> None:
    """Load a compiled filter for the calling thread (needs no_new_privs or CAP_SYS_ADMIN)."""
    try:
        linux.seccomp_set_filter(program, flags)
    except OSError as exc:
        raise SetupError(f"cannot load the seccomp filter: {exc.strerror}", pointer) from exc


def install(seccomp: dict, pointer: str = "/linux/seccomp") -> None:
    """Compile and load ``seccomp`` for the calling thread; the caller has set no_new_privs
    or holds CAP_SYS_ADMIN, and calls this as late as possible before exec."""
    load(*compile_filter(seccomp, pointer), pointer)
