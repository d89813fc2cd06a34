"""DNS relay, guest side: a resolver that lives on the pod's loopback on the host.

Owns the UDP listeners on the nameserver addresses the host names (docker's embedded DNS at
127.0.0.11 on a user-defined network: it answers only inside the pod's network namespace on
the host, which the guest's loopback is not). Each query goes to the host as a ``dns`` event
(``hyperpy/dns_relay.py`` asks the real resolver from that namespace); the answer comes back
as a ``dns_reply`` request and is sent to whoever asked. At most ``MAX_PENDING`` queries are
outstanding; the oldest is forgotten first. UDP only.
"""

from __future__ import annotations

import base64
import collections
import selectors
import socket
from collections.abc import Callable

from agent import linux

MAX_PENDING = 256
MAX_QUERY = 4096


class Relay:
    def __init__(self, sel: selectors.BaseSelector, send_event: Callable[[dict], None]) -> None:
        self.sel = sel
        self.send_event = send_event
        self.pending: collections.OrderedDict[int, tuple[socket.socket, tuple]] = (
            collections.OrderedDict()
        )
        self.next_q = 1

    def listen(self, netns_fd: int, servers: list[str]) -> None:
        """UDP listeners on ``servers``:53 in the network namespace ``netns_fd``."""
        with linux.in_netns(netns_fd):
            for server in servers:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.setblocking(False)
                    sock.bind((server, 53))
                except OSError:
                    sock.close()
                    raise
                self.sel.register(sock, selectors.EVENT_READ, self._handler(sock, server))

    def _handler(self, sock: socket.socket, server: str) -> Callable[[int], None]:
        def on_query(mask: int) -> None:
            try:
                data, addr = sock.recvfrom(MAX_QUERY)
            except OSError:
                return
            q = self.next_q
            self.next_q += 1
            self.pending[q] = (sock, addr)
            while len(self.pending) > MAX_PENDING:
                self.pending.popitem(last=False)
            self.send_event({"event": "dns", "q": q, "server": server,
                             "data": base64.b64encode(data).decode()})  # fmt: skip

        return on_query

    def reply(self, q: int, data: str) -> None:
        entry = self.pending.pop(q, None)
        if entry is None:
            return  # timed out here, or forgotten
        sock, addr = entry
        try:
            sock.sendto(base64.b64decode(data)[:65535], addr)
        except OSError:
            pass
