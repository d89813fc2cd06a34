"""The share's host side on real mounts (as root, no guest): the structure is read-only to
the guest, entries are made fresh, links are not followed, and release removes only what
the record says."""

from __future__ import annotations

import errno
import os

import pytest

from agent import linux
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
    assert [(x.export, x.target) for x in p.binds] == [
        ("image", "c1/rootfs"), ("image", "c1/mounts/1/vol"), ("shared", "c1/mounts/2/hosts")
    ]  # fmt: skip
    assert p.guest_spec["mounts"][1]["source"] == "/run/hyperpy/image/c1/mounts/1/vol"
    assert p.guest_spec["mounts"][2]["source"] == "/run/hyperpy/shared/c1/mounts/2/hosts"
    share.apply(p, str(state))
    image, shared = state / "image", state / "shared"
    assert (image / "c1/rootfs/hello").read_text() == "hi"
    assert (image / "c1/mounts/1/vol/v").read_text() == "volume"
    assert (shared / "c1/mounts/2/hosts").read_text().startswith("127.0.0.1")
    # what QEMU (the guest) sees: nothing can be made in the structure; the image and the
    # read-only volume are read-only on the host too; a read-write volume is writable
    for path in (shared / "c2", shared / "c1/planted", image / "c1/mounts/9", image / "c9"):
        with pytest.raises(OSError) as err:
            path.mkdir()
        assert err.value.errno == errno.EROFS
    for path in (image / "c1/mounts/1/vol/new", image / "c1/rootfs/new"):
        with pytest.raises(OSError) as err:
            path.write_text("x")
        assert err.value.errno == errno.EROFS
    (shared / "c1/mounts/2/hosts").write_text("rw")
    share.release(str(state), "c1")
    for export in (image, shared):
        assert mounts_below(str(export)) == [str(export)]
    assert not (state / "share-rw/c1").exists() and not (state / "image-rw/c1").exists()
    assert src.read_text() == "rw" and (vol / "v").exists()


def test_an_entry_that_exists_is_refused_and_left_alone(state, host):
    b, vol, src, secret = host
    # a leftover (or anything not made by this create) where the member's entry would go
    os.mkdir(state / "image-rw/c2")
    os.symlink(secret, state / "image-rw/c2/rootfs")
    with pytest.raises(VMError, match="exists already"):
        share.apply(share.plan(spec_for(vol, src), str(b), "c2"), str(state))
    assert not mounts_below(str(secret))
    assert os.path.islink(state / "image-rw/c2/rootfs")  # not ours: not removed
    assert (secret / "keep").read_text() == "keep"
    os.unlink(state / "image-rw/c2/rootfs")
    os.rmdir(state / "image-rw/c2")


def test_a_link_on_the_way_to_a_mount_point_is_not_followed(state, host):
    b, _, _, secret = host
    os.makedirs(state / "image-rw/c3")
    os.symlink(secret, state / "image-rw/c3/rootfs")
    export_fd = os.open(state / "image", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(VMError, match="not the directory hyperpy made"):
            share._bind(export_fd, share.Bind(str(b / "rootfs"), "c3/rootfs", True))
        os.unlink(state / "image-rw/c3/rootfs")
        os.symlink(secret, state / "image-rw/c3/mounts")  # a link before the last component
        with pytest.raises(OSError) as err:
            share._bind(export_fd, share.Bind(str(b / "rootfs"), "c3/mounts/0", True))
        assert err.value.errno == errno.ELOOP
    finally:
        os.close(export_fd)
    assert not mounts_below(str(secret))
    os.unlink(state / "image-rw/c3/mounts")
    os.rmdir(state / "image-rw/c3")


def test_release_follows_the_record_not_what_the_guest_wrote(state, host, tmp_path):
    b, vol, src, secret = host
    rw = tmp_path / "rwvol"
    rw.mkdir()
    spec = spec_for(vol, src)
    spec["mounts"].append({"destination": "/rw", "type": "bind", "source": str(rw)})
    share.apply(share.plan(spec, str(b), "c4"), str(state))
    inside = state / "shared/c4/mounts/3/rwvol"
    os.symlink(secret, inside / "mounts")  # guest-written names that look like entries
    os.mkdir(inside / "c4")
    share.release(str(state), "c4")
    assert (secret / "keep").read_text() == "keep" and not mounts_below(str(secret))
    assert os.path.islink(rw / "mounts") and (rw / "c4").is_dir()
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


def test_memory_volumes_that_mean_nothing_on_the_host_stay_in_the_guest(tmp_path):
    from agent import linux

    shm = tmp_path / "sandbox-shm"
    shm.mkdir()
    empty = tmp_path / "pods/u/volumes/kubernetes.io~empty-dir/cache"
    empty.mkdir(parents=True)
    plain = tmp_path / "run-dir"
    plain.mkdir()
    for d in (shm, empty, plain):
        linux.mount("tmpfs", str(d), "tmpfs", 0, "size=1m")
    try:
        (tmp_path / "b" / "rootfs").mkdir(parents=True)
        mounts = [
            {"destination": "/dev/shm", "type": "bind", "source": str(shm), "options": ["rbind"]},
            {"destination": "/cache", "type": "bind", "source": str(empty), "options": ["rbind"]},
            {"destination": "/run/x", "type": "bind", "source": str(plain), "options": ["rbind"]},
            {
                "destination": "/ro",
                "type": "bind",
                "source": str(shm),
                "options": ["rbind", "ro"],
            },  # fmt: skip
        ]
        p = share.plan({"root": {"path": "rootfs"}, "mounts": mounts}, str(tmp_path / "b"), "c")
        srcs = [m["source"] for m in p.guest_spec["mounts"]]
        assert srcs[0].startswith("/run/hyperpy/ephemeral/")
        assert srcs[1].startswith("/run/hyperpy/ephemeral/") and srcs[1] != srcs[0]
        assert srcs[2] == "/run/hyperpy/shared/c/mounts/2/run-dir"  # a plain tmpfs dir: shared
        assert srcs[3] == "/run/hyperpy/image/c/mounts/3/sandbox-shm"  # read-only: exported
        assert [b.target for b in p.binds] == ["c/rootfs", "c/mounts/2/run-dir",
                                               "c/mounts/3/sandbox-shm"]  # fmt: skip
        again = share.plan({"root": {"path": "rootfs"}, "mounts": mounts[:1]},
                           str(tmp_path / "b"), "other")  # fmt: skip
        assert again.guest_spec["mounts"][0]["source"] == srcs[0]  # one per host source
    finally:
        for d in (shm, empty, plain):
            linux.umount2(str(d), linux.MNT_DETACH)


def test_faithful_puts_the_root_and_rw_volumes_on_the_passthrough_export(host, state):
    b, vol, src, _ = host
    spec = spec_for(vol, src)
    spec["mounts"][1]["options"] = ["rbind", "rw"]
    p = share.plan(spec, str(b), "c1", faithful=True)
    root, data, hosts = p.binds
    assert (root.export, root.readonly, root.recursive) == (share.IMAGE, False, True)
    assert (data.export, data.readonly, data.recursive) == (share.IMAGE, False, True)
    assert (hosts.export, hosts.recursive) == (share.IMAGE, False)  # "bind": not recursive
    assert p.guest_spec["mounts"][1]["source"].startswith(share.GUEST[share.IMAGE])
    spec["root"]["readonly"] = True  # applied by the guest once the mount points are made
    assert not share.plan(spec, str(b), "c2", faithful=True).binds[0].readonly
    strict = share.plan(spec_for(vol, src), str(b), "c3")
    assert strict.binds[0].readonly and strict.binds[2].export == share.SHARED
    share.apply(p, str(state))
    image = state / "image" / "c1"
    (image / "rootfs" / "written").write_text("through")  # the root's own mount is rw
    assert (b / "rootfs" / "written").read_text() == "through"
    share.release(str(state), "c1")


@pytest.mark.parametrize("option", ["ro", "rro"])
def test_a_read_only_bind_is_read_only_where_runc_makes_it(tmp_path, host, state, option):
    b, vol, src, _ = host
    (vol / "sub").mkdir()
    linux.mount("tmpfs", str(vol / "sub"), "tmpfs", 0, "size=1m")
    try:
        spec = spec_for(vol, src)
        spec["mounts"][1]["options"] = ["rbind", option]
        p = share.plan(spec, str(b), "c1", faithful=True)
        guest_opts = p.guest_spec["mounts"][1]["options"]
        # ro: the guest leaves its 9p mount rw, the host makes the bind's own mount ro
        assert ("ro" in guest_opts) == (option == "rro"), guest_opts
        share.apply(p, str(state))
        data = state / "image" / "c1" / "mounts" / "1" / "vol"
        with pytest.raises(OSError) as top:
            (data / "x").write_text("no")
        assert top.value.errno == errno.EROFS
        if option == "ro":
            (data / "sub" / "y").write_text("yes")  # the submount keeps its own flags
        else:
            with pytest.raises(OSError):
                (data / "sub" / "y").write_text("no")
        share.release(str(state), "c1")
    finally:
        linux.umount2(str(vol / "sub"), linux.MNT_DETACH)
