"""The OCI ``linux.seccomp`` profile compiled to a classic-BPF seccomp filter, in Python.

Written here rather than taken from libseccomp: the guest's initrd carries only Debian's
python3.11 and its standard library, and python3-seccomp would add libseccomp and its
binding to every boot for what is a few hundred lines of straightforward code generation.

The program:

1. checks ``seccomp_data.arch``: anything but x86_64 (i386 through int 0x80, or x32
   syscall numbers unless SCMP_ARCH_X32 is listed) gets ENOSYS, so a deny-list profile
   cannot be sidestepped through another ABI (the guest kernel has no 32-bit emulation);
2. per syscall named in the profile, in profile order: ``nr == N`` guards a block that
   evaluates that syscall's rules in the order they appear (first match wins; libseccomp
   orders by action instead), each rule's argument conditions ANDed, compared as 64-bit
   values from their two 32-bit halves;
3. falls through to ``defaultAction``.

Names that x86_64 does not have (``_llseek``, ``chown32``...: profiles such as Docker's list
them for every architecture) are skipped, as libseccomp skips names unknown on an arch;
the host already rejected names unknown everywhere.  Long jumps use ``BPF_JA`` (32-bit
offsets), so profile size is limited only by the kernel's 4096 instructions.
"""

from __future__ import annotations

import struct

from agent import linux
from agent.errors import SetupError
from agent.syscalls import X86_64_NUMBERS

AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
ENOSYS, EPERM = 38, 1
BPF_MAXINSNS = 4096

# classic BPF opcodes
LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
JA = 0x05
JEQ, JGT, JGE = 0x15, 0x25, 0x35
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
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}


class _Asm:
    """Instructions whose jump targets are labels, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}
        self.n = 0

    def label(self) -> str:
        self.n += 1
        return f"L{self.n}"

    def place(self, label: str) -> None:
        self.labels[label] = len(self.code)

    def emit(self, op: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((op, jt, jf, k & 0xFFFFFFFF))

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (op, jt, jf, k) in enumerate(self.code):
            offs = []
            for target in (jt, jf):
                off = self.labels[target] - i - 1 if isinstance(target, str) else int(target)
                if op != JA and not 0 <= off <= 255:
                    raise SetupError("seccomp profile too large for a conditional jump",
                                     "/linux/seccomp")  # fmt: skip
                offs.append(off)
            if op == JA:
                k = self.labels[jt] - i - 1 if isinstance(jt, str) else k
                offs = [0, 0]
            out += struct.pack("<HBBI", op, offs[0], offs[1], k)
        return bytes(out)


def action(name: str, errno_ret: int | None, pointer: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise SetupError("SCMP_ACT_NOTIFY is not supported by hyperpy", pointer)
    if name not in RET:
        raise SetupError(f"unknown seccomp action {name!r}", pointer)
    ret = RET[name]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        default = EPERM if name == "SCMP_ACT_ERRNO" else 0
        ret |= (default if errno_ret is None else errno_ret) & 0xFFFF
    return ret


def _condition(asm: _Asm, cond: dict, ok: str, fail: str, pointer: str) -> None:
    """Code that jumps to ``ok`` when the 64-bit argument condition holds, else ``fail``."""
    index = cond.get("index", 0)
    if not 0 <= index <= 5:
        raise SetupError(f"argument index {index} is not 0..5", pointer + "/index")
    op = cond.get("op", "")
    value = cond.get("value", 0) & 0xFFFFFFFFFFFFFFFF
    v_hi, v_lo = value >> 32, value & 0xFFFFFFFF
    lo_off = OFF_ARGS + 8 * index
    hi_off = lo_off + 4
    if op == "SCMP_CMP_MASKED_EQ":
        want = cond.get("valueTwo", 0) & 0xFFFFFFFFFFFFFFFF
        asm.emit(LD_ABS, hi_off)
        asm.emit(AND_K, v_hi)
        asm.emit(JEQ, want >> 32, 0, fail)
        asm.emit(LD_ABS, lo_off)
        asm.emit(AND_K, v_lo)
        asm.emit(JEQ, want & 0xFFFFFFFF, ok, fail)
        return
    # (yes, no) swap turns a comparison into its negation
    table = {
        "SCMP_CMP_EQ": ("eq", ok, fail),
        "SCMP_CMP_NE": ("eq", fail, ok),
        "SCMP_CMP_GT": ("gt", ok, fail),
        "SCMP_CMP_LE": ("gt", fail, ok),
        "SCMP_CMP_GE": ("ge", ok, fail),
        "SCMP_CMP_LT": ("ge", fail, ok),
    }
    if op not in table:
        raise SetupError(f"unknown seccomp operator {op!r}", pointer + "/op")
    kind, yes, no = table[op]
    asm.emit(LD_ABS, hi_off)
    if kind == "eq":
        asm.emit(JEQ, v_hi, 0, no)
        asm.emit(LD_ABS, lo_off)
        asm.emit(JEQ, v_lo, yes, no)
        return
    asm.emit(JGT, v_hi, yes, 0)  # high word bigger: strictly greater either way
    asm.emit(JEQ, v_hi, 0, no)  # high word smaller
    asm.emit(LD_ABS, lo_off)
    asm.emit(JGT if kind == "gt" else JGE, v_lo, yes, no)


def compile_filter(seccomp: dict, pointer: str = "/linux/seccomp") -> tuple[bytes, int]:
    """(program, seccomp(2) flags) for an OCI seccomp object."""
    default = action(
        seccomp.get("defaultAction", ""), seccomp.get("defaultErrnoRet"), pointer + "/defaultAction"
    )
    flags = 0
    for i, name in enumerate(seccomp.get("flags") or []):
        if name not in FLAGS:
            raise SetupError(f"unknown seccomp flag {name!r}", f"{pointer}/flags/{i}")
        flags |= FLAGS[name]
    allow_x32 = "SCMP_ARCH_X32" in (seccomp.get("architectures") or [])
    # syscall number -> [(rule pointer, conditions, return value)], in profile order
    per_nr: dict[int, list[tuple[str, list, int]]] = {}
    for i, rule in enumerate(seccomp.get("syscalls") or []):
        rp = f"{pointer}/syscalls/{i}"
        ret = action(rule.get("action", ""), rule.get("errnoRet"), rp + "/action")
        for name in rule.get("names") or []:
            nr = X86_64_NUMBERS.get(name)
            if nr is not None:
                per_nr.setdefault(nr, []).append((rp, rule.get("args") or [], ret))
    asm = _Asm()
    enosys = RET["SCMP_ACT_ERRNO"] | ENOSYS
    asm.emit(LD_ABS, OFF_ARCH)
    asm.emit(JEQ, AUDIT_ARCH_X86_64, 1, 0)
    asm.emit(RET_K, enosys)  # another ABI
    asm.emit(LD_ABS, OFF_NR)
    asm.emit(JGE, X32_BIT, 0, 1)
    # an x32 syscall: refused unless the profile lists x32, which shares x86_64's numbers
    if allow_x32:
        asm.emit(AND_K, ~X32_BIT)
    else:
        asm.emit(RET_K, enosys)
    for nr, rules in per_nr.items():
        next_nr = asm.label()
        asm.emit(LD_ABS, OFF_NR)
        if allow_x32:
            asm.emit(AND_K, ~X32_BIT)
        asm.emit(JEQ, nr, 1, 0)
        asm.emit(JA, 0, next_nr)
        for rp, conds, ret in rules:
            next_rule = asm.label()
            for j, cond in enumerate(conds):
                ok = asm.label()
                _condition(asm, cond, ok, next_rule, f"{rp}/args/{j}")
                asm.place(ok)
            asm.emit(RET_K, ret)
            asm.place(next_rule)
        asm.place(next_nr)
    asm.emit(RET_K, default)
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
