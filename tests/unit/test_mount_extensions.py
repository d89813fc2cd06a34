"""runc's mount extensions in the guest: ``tmpcopyup`` (podman writes it for ``--tmpfs`` and
``--read-only``) is a step the agent takes, never a tmpfs option; the copy it makes."""

from __future__ import annotations

import os
import stat

from agent import linux
from agent.container import copy_tree


def test_tmpcopyup_is_not_passed_to_mount():
    flags, propagation, data = linux.parse_mount_options(
        ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup", "size=65536k", "mode=1777"]
    )
    assert data == ["size=65536k", "mode=1777"]
    assert flags == linux.MS_NOSUID | linux.MS_NODEV
    assert propagation == linux.MS_PRIVATE | linux.MS_REC


def test_copy_tree_keeps_files_links_modes_and_times(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "deeper" / "f").write_bytes(b"x" * (3 << 20))
    (src / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o750)
    os.symlink("sub/deeper/f", src / "link")
    os.symlink("/nowhere", src / "dangling")
    os.mkfifo(src / "fifo")
    os.chmod(src / "sub", 0o555)  # read-only: its contents are copied before its mode
    os.utime(src / "run.sh", ns=(1_000_000_000, 2_000_000_000))
    dst.mkdir()
    copy_tree(str(src), str(dst))
    assert (dst / "sub" / "deeper" / "f").read_bytes() == b"x" * (3 << 20)
    assert stat.S_IMODE(os.stat(dst / "run.sh").st_mode) == 0o750
    assert os.stat(dst / "run.sh").st_mtime_ns == 2_000_000_000
    assert os.readlink(dst / "link") == "sub/deeper/f"
    assert os.readlink(dst / "dangling") == "/nowhere"
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
    assert stat.S_IMODE(os.stat(dst / "sub").st_mode) == 0o555
    os.chmod(src / "sub", 0o755)
    os.chmod(dst / "sub", 0o755)
