"""DNS relay, host side: the guest's queries asked of a resolver on the pod's loopback.

Owns answering the agent's ``dns`` events (``agent/dns.py``): the monitor lives in the pod's
network namespace, so a query sent from here to 127.0.0.11:53 reaches docker's embedded DNS
as one from the container would under runc. What the guest sends is hostile input: only the
servers the host itself found in the container's resolv.conf are asked (the guest never
chooses an address), a query is at most ``MAX_QUERY`` bytes, at most ``MAX_INFLIGHT`` are
asked at once (more are dropped: DNS clients retry), and each waits ``TIMEOUT`` seconds for
the server and as long for the agent to take the answer. So a guest that floods the relay,
or asks what the server never answers, makes the host hold at most ``MAX_INFLIGHT`` sockets
and queries, whatever it sends; what it drops is counted in rate-limited warnings.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

from hyperpy.log import GuestWarnings

log = logging.getLogger(__name__)

MAX_QUERY = 4096
MAX_INFLIGHT = 64
TIMEOUT = 5.0


def loopback_nameservers(resolv_conf: str) -> list[str]:
    """The IPv4 loopback nameservers of a resolv.conf file (what only the pod's namespace
    on the host can reach); nothing if it cannot be read."""
    out: list[str] = []
    try:
        with open(resolv_conf, errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(parts[1])
            except ValueError:
                continue
            if addr.version == 4 and addr.is_loopback and parts[1] not in out:
                out.append(parts[1])
    return out[:3]


class Relay:
    def __init__(self, servers: list[str], answer: Callable[[int, str], Awaitable[object]],
                 warn: Callable[..., None] | None = None) -> None:  # fmt: skip
        self.servers = set(servers)
        self.answer = answer  # sends dns_reply to the agent
        self.warn = warn or GuestWarnings(log)
        self.inflight = 0
        self.dropped = 0

    def query(self, msg: dict) -> Awaitable[None] | None:
        """The coroutine that answers event ``msg``, or None when it is dropped."""
        server, q, data = msg.get("server"), msg.get("q"), msg.get("data")
        if not isinstance(server, str) or server not in self.servers:
            return None
        if not isinstance(q, int) or not isinstance(data, str):
            return None
        if len(data) > MAX_QUERY * 4 // 3 + 4 or self.inflight >= MAX_INFLIGHT:
            self.dropped += 1
            self.warn("DNS query from the guest dropped (%d in flight, %d bytes of base64; "
                      "%d dropped in all)", self.inflight, len(data), self.dropped)  # fmt: skip
            return None
        try:
            packet = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None
        self.inflight += 1
        return self._ask(str(server), q, packet)

    async def _ask(self, server: str, q: int, packet: bytes) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((server, 53))
            await loop.sock_sendall(sock, packet)
            reply = await asyncio.wait_for(loop.sock_recv(sock, 65535), TIMEOUT)
            await self.answer(q, base64.b64encode(reply).decode())
        except (OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - a lost query
            log.debug("DNS query to %s not answered: %r", server, exc)
        finally:
            self.inflight -= 1
            with contextlib.suppress(OSError):
                sock.close()
