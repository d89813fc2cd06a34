"""Pure logic of the artifact builders: the cpio writer and the kernel fragment check."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from initrd import cpio
from kernel import build as kb


def test_cpio_roundtrip_and_layout() -> None:
    entries = [
        cpio.file("bin/x", b"abc", 0o755),
        cpio.directory("bin"),
        cpio.symlink("bin/y", "x"),
        cpio.chardev("dev/null", 1, 3, 0o666),
        cpio.directory("dev"),
    ]
    data = cpio.write(entries)
    assert len(data) % 4 == 0
    back = cpio.read(data)
    assert [e.path for e in back] == ["bin", "bin/x", "bin/y", "dev", "dev/null"]
    x = back[1]
    assert x.data == b"abc" and stat.S_IMODE(x.mode) == 0o755 and stat.S_ISREG(x.mode)
    assert back[2].data == b"x" and stat.S_ISLNK(back[2].mode)
    assert back[4].rdev == (1, 3)


def test_cpio_same_bytes_whatever_the_input_order() -> None:
    a = [cpio.directory("a"), cpio.file("a/1", b"1"), cpio.file("a/2", b"22")]
    assert cpio.write(a) == cpio.write(list(reversed(a)))


def test_cpio_rejects_duplicates_and_orphans() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        cpio.write([cpio.directory("a"), cpio.directory("a/")])
    with pytest.raises(ValueError, match="no parent"):
        cpio.write([cpio.file("a/b", b"")])


def test_cpio_readable_by_gnu_cpio(tmp_path: Path) -> None:
    data = cpio.write([cpio.directory("d"), cpio.file("d/f", b"hello\n", 0o640)])
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=tmp_path, check=True, timeout=30)
    f = tmp_path / "d" / "f"
    assert f.read_bytes() == b"hello\n" and stat.S_IMODE(f.stat().st_mode) == 0o640


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="needs Debian's python3.11")
def test_initrd_is_byte_reproducible(tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"initrd{i}.img"
        subprocess.run(
            [sys.executable, "-m", "initrd.build", "--out", str(out)], check=True, timeout=120
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    names = {e.path for e in cpio.read(outs[0])}
    assert {"init", "usr/bin/python3.11", "opt/hyperpy/agent/main.pyc", "dev/console"} <= names
    assert not any(n.endswith(".py") for n in names)


def test_fragments_parse_and_are_consistent() -> None:
    reqs = kb.read_fragments()
    syms = {r.symbol for r in reqs}
    assert {"CONFIG_9P_FS", "CONFIG_VIRTIO_VSOCKETS", "CONFIG_MEMCG", "CONFIG_PVH"} <= syms
    assert all(r.fragment.endswith(".conf") for r in reqs)


def test_missing_symbol_is_named_with_its_fragment(tmp_path: Path) -> None:
    (tmp_path / "10-a.conf").write_text('# comment\nCONFIG_A=y\nCONFIG_B="x"\n')
    (tmp_path / "20-b.conf").write_text("# CONFIG_C is not set\nCONFIG_D=y\n")
    reqs = kb.read_fragments(tmp_path)
    final = kb.parse_config('CONFIG_A=y\nCONFIG_B="x"\n# CONFIG_D is not set\n')
    problems = kb.missing_symbols(reqs, final)
    assert len(problems) == 1 and problems[0].startswith("CONFIG_D: 20-b.conf:2 asks for y")


def test_contradicting_fragments_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("CONFIG_A=y\n")
    (tmp_path / "b.conf").write_text("# CONFIG_A is not set\n")
    with pytest.raises(kb.KernelBuildError, match="contradicts a.conf:1"):
        kb.read_fragments(tmp_path)


def test_cache_key_follows_fragments_and_version(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("CONFIG_A=y\n")
    k1 = kb.cache_key("6.1.1", tmp_path)
    assert k1 == kb.cache_key("6.1.1", tmp_path)
    assert k1 != kb.cache_key("6.1.2", tmp_path)
    (tmp_path / "a.conf").write_text("CONFIG_A=m\n")
    assert k1 != kb.cache_key("6.1.1", tmp_path)
