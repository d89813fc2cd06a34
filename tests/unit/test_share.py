"""The share's host side on real mounts (as root, no guest): the structure is read-only to
the guest, entries are made fresh, links are not followed, and release removes only what
the record says."""

from __future__ import annotations

import errno
import os

import pytest

from hyperpy import share
from hyperpy.errors import HyperpyError, VMError
from hyperpy.sandbox.store import Store, mounts_below

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


@pytest.fixture
def state(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    share.prepare(str(d))
    yield d
    share.release(str(d))
    assert not mounts_below(str(d)), mounts_below(str(d))


@pytest.fixture
def host(tmp_path):
    """A bundle with a rootfs, a volume, a file to bind, and a host dir that must stay
    untouched."""
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    (b / "rootfs" / "hello").write_text("hi")
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "v").write_text("volume")
    src = tmp_path / "hosts"
    src.write_text("127.0.0.1 localhost\n")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "keep").write_text("keep")
    return b, vol, src, secret


def spec_for(vol, src):
    return {
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/data",
                "type": "bind",
                "source": str(vol),
                "options": ["rbind", "ro"],
            },  # fmt: skip
            {"destination": "/etc/hosts", "type": "bind", "source": str(src), "options": ["bind"]},
        ],
    }


def test_binds_keep_base_names_and_the_structure_is_read_only(state, host):
    b, vol, src, _ = host
    p = share.plan(spec_for(vol, src), str(b), "c1")
    assert [x.target for x in p.binds] == ["c1/rootfs", "c1/mounts/1/vol", "c1/mounts/2/hosts"]
    assert p.guest_spec["mounts"][1]["source"] == "/run/hyperpy/shared/c1/mounts/1/vol"
    share.apply(p, str(state))
    export = state / "shared"
    assert (export / "c1/rootfs/hello").read_text() == "hi"
    assert (export / "c1/mounts/1/vol/v").read_text() == "volume"
    assert (export / "c1/mounts/2/hosts").read_text().startswith("127.0.0.1")
    # what QEMU (the guest) sees: nothing can be made in the structure, ro volumes stay ro
    for path in (export / "c2", export / "c1/planted", export / "c1/mounts/9"):
        with pytest.raises(OSError) as err:
            path.mkdir()
        assert err.value.errno == errno.EROFS
    with pytest.raises(OSError) as err:
        (export / "c1/mounts/1/vol/new").write_text("x")
    assert err.value.errno == errno.EROFS
    (export / "c1/rootfs/written").write_text("rw")  # the rootfs itself is writable
    share.release(str(state), "c1")
    assert mounts_below(str(export)) == [str(export)]
    assert not (state / "share-rw/c1").exists()
    assert (b / "rootfs/written").read_text() == "rw" and (vol / "v").exists()


def test_an_entry_that_exists_is_refused_and_left_alone(state, host):
    b, vol, src, secret = host
    # a leftover (or anything not made by this create) where the member's entry would go
    os.mkdir(state / "share-rw/c2")
    os.symlink(secret, state / "share-rw/c2/rootfs")
    with pytest.raises(VMError, match="exists already"):
        share.apply(share.plan(spec_for(vol, src), str(b), "c2"), str(state))
    assert not mounts_below(str(secret))
    assert os.path.islink(state / "share-rw/c2/rootfs")  # not ours: not removed
    assert (secret / "keep").read_text() == "keep"
    os.unlink(state / "share-rw/c2/rootfs")
    os.rmdir(state / "share-rw/c2")


def test_a_link_on_the_way_to_a_mount_point_is_not_followed(state, host):
    b, _, _, secret = host
    os.makedirs(state / "share-rw/c3")
    os.symlink(secret, state / "share-rw/c3/rootfs")
    export_fd = os.open(state / "shared", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(VMError, match="not the directory hyperpy made"):
            share._bind(export_fd, share.Bind(str(b / "rootfs"), "c3/rootfs", True))
        os.unlink(state / "share-rw/c3/rootfs")
        os.symlink(secret, state / "share-rw/c3/mounts")  # a link before the last component
        with pytest.raises(OSError) as err:
            share._bind(export_fd, share.Bind(str(b / "rootfs"), "c3/mounts/0", True))
        assert err.value.errno == errno.ELOOP
    finally:
        os.close(export_fd)
    assert not mounts_below(str(secret))
    os.unlink(state / "share-rw/c3/mounts")
    os.rmdir(state / "share-rw/c3")


def test_release_follows_the_record_not_what_the_guest_wrote(state, host):
    b, vol, src, secret = host
    share.apply(share.plan(spec_for(vol, src), str(b), "c4"), str(state))
    rootfs = state / "shared/c4/rootfs"
    os.symlink(secret, rootfs / "mounts")  # guest-written names that look like entries
    os.mkdir(rootfs / "c4")
    share.release(str(state), "c4")
    assert (secret / "keep").read_text() == "keep" and not mounts_below(str(secret))
    assert os.path.islink(b / "rootfs/mounts") and (b / "rootfs/c4").is_dir()
    assert (b / "rootfs/hello").read_text() == "hi"


def test_the_store_never_removes_through_a_mount(tmp_path, host):
    b, *_ = host
    store = Store(str(tmp_path / "root"))
    d = store.make("victim")
    os.mkdir(os.path.join(d, "m"))
    from agent import linux

    linux.mount(str(b / "rootfs"), os.path.join(d, "m"), None, linux.MS_BIND)
    try:
        with pytest.raises(HyperpyError, match="still mounted"):
            store.remove("victim")
        assert (b / "rootfs/hello").read_text() == "hi"
    finally:
        linux.umount2(os.path.join(d, "m"), linux.MNT_DETACH)
    store.remove("victim")
    assert not os.path.exists(d)
