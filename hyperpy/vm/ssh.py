"""The node's SSH connection to a remote hypervisor host (paramiko), for ``vm/remote.py``.

Owns connecting (strict host-key checking against ``[remote] known_hosts``; the errors name
the host, the file and the fix), running a command and reading its result, and putting
files there: the guest kernel and initrd and hyperpy's remote side into a content-addressed
cache (``WORKDIR/cache/<sha256>``, copied over SFTP once per hash, under a temporary name
then renamed, so a half copy is never used), and a tree of files (a container's rootfs, a
read-only mount) into a pod's directory as one tar stream over an exec channel: owners,
modes, symlinks and hard links arrive as they are, in one round trip.

paramiko is imported here only, and only by the remote driver and ``hyperpy check``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import socket
import tarfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hyperpy.errors import VMError

if TYPE_CHECKING:
    from hyperpy.config import RemoteConfig

log = logging.getLogger(__name__)

SFTP_TIMEOUT = 60.0  # any one SFTP request
_hashes: dict[tuple, str] = {}
_hash_lock = threading.Lock()


class RemoteError(VMError):
    """The remote host could not be reached, refused us, or a command there failed."""


def _ssh_errors() -> tuple[type[BaseException], ...]:
    try:
        import paramiko  # type: ignore[import-untyped]
    except ImportError:
        return (OSError, EOFError)
    return (paramiko.SSHException, OSError, EOFError)


# what paramiko raises on a connection that fails mid-way (made RemoteError where caught)
SSH_ERRORS = _ssh_errors()


def tcp_connection(cfg: RemoteConfig) -> socket.socket:
    """A TCP connection to the remote host that fails when ``[remote] watchdog_s`` passes
    with data unacknowledged (TCP_USER_TIMEOUT; SSH keepalives are such data): a silently
    dropped link is seen by the node as the remote side sees it, not after TCP's 15
    minutes of retries."""
    try:
        sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout)
    except OSError as exc:
        raise RemoteError(
            f"cannot reach the remote host {cfg.host}:{cfg.port} ([remote] host, port): {exc}"
        ) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(cfg.watchdog_s * 1000))
    return sock


def where(cfg: RemoteConfig) -> str:
    return f"{cfg.user}@{cfg.host}:{cfg.port}"


def connect(cfg: RemoteConfig, sock: socket.socket | None = None) -> Any:
    """An authenticated paramiko SSHClient; ``sock`` is a TCP connection made already (the
    monitor makes it before it enters the pod's network namespace)."""
    import paramiko  # type: ignore[import-untyped]

    if not cfg.host:
        raise RemoteError("[remote] host is not set: name the hypervisor host in the config")
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(cfg.known_hosts)
    except OSError as exc:
        raise RemoteError(
            f"cannot read [remote] known_hosts {cfg.known_hosts}: {exc.strerror}; add the "
            f"remote host's key (ssh-keyscan -p {cfg.port} {cfg.host} > {cfg.known_hosts}, "
            "after checking its fingerprint)"
        ) from None
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            cfg.host, port=cfg.port, username=cfg.user, key_filename=cfg.key_file,
            timeout=cfg.connect_timeout, banner_timeout=cfg.connect_timeout,
            auth_timeout=cfg.connect_timeout, allow_agent=False, look_for_keys=False,
            sock=sock,
        )  # fmt: skip
    except paramiko.BadHostKeyException as exc:
        raise RemoteError(
            f"the host key of {cfg.host}:{cfg.port} does not match {cfg.known_hosts} "
            f"(got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}): the host changed, "
            "or someone is in between; fix known_hosts only once you know which"
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise RemoteError(
                f"{cfg.host}:{cfg.port} is not in [remote] known_hosts {cfg.known_hosts}: "
                f"add its key (ssh-keyscan -p {cfg.port} {cfg.host} >> {cfg.known_hosts}) "
                "after checking its fingerprint"
            ) from None
        if isinstance(exc, paramiko.AuthenticationException):
            raise RemoteError(
                f"authentication as {where(cfg)} with [remote] key_file {cfg.key_file} "
                f"failed: {exc}; put its public key in that user's authorized_keys"
            ) from None
        raise RemoteError(f"SSH to {where(cfg)} failed: {exc}") from None
    except (OSError, EOFError) as exc:
        raise RemoteError(f"SSH to {where(cfg)} failed: {exc!r}") from None
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(5)
    return client


def run(client: Any, argv: list[str], timeout: float = 60.0, stdin: bytes = b"") -> bytes:
    """Run ``argv`` on the remote host; its stdout, or RemoteError with its stderr."""
    command = shlex.join(argv)
    return _exec(client, command, timeout, f"{command} on the remote host",
                 (lambda chan: chan.sendall(stdin)) if stdin else None)  # fmt: skip


def _exec(client: Any, command: str, timeout: float, what: str,
          feed: Callable[[Any], None] | None = None,
          open_timeout: float | None = None) -> bytes:  # fmt: skip
    """Run ``command`` on an exec channel: ``feed`` writes its stdin (then EOF); its stdout,
    or RemoteError naming ``what``, its exit status and its stderr's end."""
    try:
        chan = client.get_transport().open_session(timeout=open_timeout or timeout)
    except SSH_ERRORS as exc:
        raise RemoteError(f"{what}: {exc!r}") from None
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        if feed is not None:
            feed(chan)
        chan.shutdown_write()
        out, err = _read_all(chan)
        rc = _exit_status(chan, timeout)
    except SSH_ERRORS as exc:
        raise RemoteError(f"{what}: {exc!r}") from None
    finally:
        chan.close()
    if rc != 0:
        raise RemoteError(f"{what} exited {rc}: {err.decode()[-500:]}")
    return out


def _exit_status(chan: Any, timeout: float) -> int:
    if not chan.status_event.wait(timeout):
        raise TimeoutError(f"no exit status within {timeout:.0f}s")
    return int(chan.recv_exit_status())


def _read_all(chan: Any) -> tuple[bytes, bytes]:
    err = bytearray()

    def drain_err() -> None:
        while True:
            data = chan.recv_stderr(65536)
            if not data:
                return
            err.extend(data)

    t = threading.Thread(target=drain_err, daemon=True)
    t.start()
    out = bytearray()
    while True:
        data = chan.recv(65536)
        if not data:
            break
        out.extend(data)
    t.join(5)
    return bytes(out), bytes(err)


def file_hash(path: str) -> str:
    """sha256 of ``path``, computed once per (device, inode, size, mtime)."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hashes:
            return _hashes[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    with _hash_lock:
        _hashes[key] = h.hexdigest()
    return _hashes[key]


def cached(client: Any, workdir: str, path: str, suffix: str = "") -> str:
    """The remote path of ``path``'s content in the cache, copied there if missing."""
    remote = f"{workdir}/cache/{file_hash(path)}{suffix}"
    try:
        return _cached(client, workdir, path, remote)
    except SSH_ERRORS as exc:
        raise RemoteError(f"copying {path} to {remote} on the remote host: {exc!r}") from None


def _cached(client: Any, workdir: str, path: str, remote: str) -> str:
    sftp = client.open_sftp()
    sftp.get_channel().settimeout(SFTP_TIMEOUT)
    try:
        try:
            sftp.stat(remote)
            return remote
        except OSError:
            pass
        run(client, ["mkdir", "-p", "-m", "0700", f"{workdir}/cache"])
        tmp = f"{remote}.part-{os.getpid()}"
        try:
            sftp.put(path, tmp)
            sftp.chmod(tmp, 0o644)
            sftp.posix_rename(tmp, remote)
        except BaseException:
            with contextlib.suppress(*SSH_ERRORS):
                sftp.remove(tmp)
            raise
        log.info("copied %s to the remote cache as %s", path, remote)
        return remote
    finally:
        sftp.close()


def put_tree(client: Any, source: str, dest: str, timeout: float = 300.0) -> None:
    """Copy ``source`` (a directory or a file; a link is followed at the top only) to
    ``dest`` on the remote host as it is, but device nodes: the remote side's 9p export of
    the image is not nodev, so none is made there (the guest's /dev is the agent's)."""
    source = os.path.realpath(source)

    def no_devices(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if info.isdev() else info

    parent = os.path.dirname(dest)

    def send(chan: Any) -> None:
        with chan.makefile("wb") as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
            tar.add(source, arcname=os.path.basename(dest), recursive=True, filter=no_devices)

    where = shlex.quote(parent)
    command = f"mkdir -p {where} && tar -x --numeric-owner -p -C {where} -f -"
    _exec(client, command, timeout, f"copying {source} to {dest} on the remote host", send,
          open_timeout=30.0)  # fmt: skip
