"""A minimal rtnetlink client for the guest: links, addresses, routes and neighbours.

Owns the bytes of the few rtnetlink requests the agent makes (``network.py`` decides what
to ask for), standard library only: the guest has no pyroute2, and an in-process socket
costs no fork and exec of busybox's ``ip`` per step (whose ``ip neigh`` cannot add entries
anyway). Every request asks for an acknowledgement; a refusal raises :class:`NetlinkError`
with the kernel's errno and what was asked.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 1, 4, 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH = 16, 18, 20, 24, 28
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_NET_NS_FD = 1, 3, 4, 28
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 4, 5, 6, 7
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
IFF_UP = 0x1
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1

NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")


class NetlinkError(OSError):
    pass


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def _ip(text: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(text)
    return (socket.AF_INET6 if addr.version == 6 else socket.AF_INET), addr.packed


def _mac(text: str) -> bytes:
    return bytes(int(b, 16) for b in text.split(":"))


class Socket:
    """An rtnetlink socket of the network namespace the caller is in when it is made (or
    of ``netns_fd``'s: the socket is made there, then the agent goes back)."""

    def __init__(self, netns_fd: int = -1) -> None:
        if netns_fd < 0:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        else:
            from agent import linux

            with linux.in_netns(netns_fd):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.settimeout(10)
        self.seq = 0

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, kind: int, body: bytes, flags: int, what: str) -> bytes:
        """Send one request; return the first reply's payload (b"" for a bare ack)."""
        self.seq += 1
        header = NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, self.seq, 0)
        self.sock.send(header + body)
        payload = b""
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + NLMSGHDR.size <= len(data):
                length, mtype, _, seq, _ = NLMSGHDR.unpack_from(data, off)
                if length < NLMSGHDR.size:
                    raise NetlinkError(0, f"{what}: garbled netlink reply")
                body_at = off + NLMSGHDR.size
                off += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype != NLMSG_ERROR:
                    payload = payload or data[body_at : body_at + length - NLMSGHDR.size]
                    if not flags & NLM_F_ACK:
                        return payload
                    continue
                (err,) = struct.unpack_from("=i", data, body_at)
                if err:
                    raise NetlinkError(-err, f"{what}: {os.strerror(-err)}")
                return payload

    # --- links ----------------------------------------------------------------------------
    def link_index(self, name: str) -> int:
        body = IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
        reply = self.request(RTM_GETLINK, body, 0, f"finding link {name}")
        return IFINFOMSG.unpack_from(reply)[2]

    def link_set(
        self,
        index: int,
        *,
        name: str = "",
        mac: str = "",
        mtu: int = 0,
        up: bool = False,
        netns_fd: int = -1,
    ) -> None:
        attrs = b""
        if name:
            attrs += _attr(IFLA_IFNAME, name.encode() + b"\0")
        if mac:
            attrs += _attr(IFLA_ADDRESS, _mac(mac))
        if mtu:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        if netns_fd >= 0:
            attrs += _attr(IFLA_NET_NS_FD, struct.pack("=I", netns_fd))
        flags = IFF_UP if up else 0
        body = IFINFOMSG.pack(0, 0, index, flags, IFF_UP if up else 0) + attrs
        self.request(RTM_NEWLINK, body, NLM_F_ACK, f"setting link {index}")

    # --- addresses, routes, neighbours ---------------------------------------------------
    def addr_add(self, index: int, ip: str, prefixlen: int) -> None:
        family, packed = _ip(ip)
        attrs = _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        if family == socket.AF_INET6:
            attrs += _attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))  # usable at once
        body = IFADDRMSG.pack(family, prefixlen, 0, 0, index) + attrs
        self.request(RTM_NEWADDR, body, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                     f"adding address {ip}/{prefixlen}")  # fmt: skip

    def route_add(
        self, index: int, dst: str, scope: int, gateway: str = "", src: str = "", metric: int = -1
    ) -> None:
        net = ipaddress.ip_network(dst, strict=False)
        family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
        attrs = _attr(RTA_OIF, struct.pack("=i", index))
        if net.prefixlen:
            attrs += _attr(RTA_DST, net.network_address.packed)
        if gateway:
            attrs += _attr(RTA_GATEWAY, _ip(gateway)[1])
        if src:
            attrs += _attr(RTA_PREFSRC, _ip(src)[1])
        if metric >= 0:
            attrs += _attr(RTA_PRIORITY, struct.pack("=I", metric))
        body = RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                          RTN_UNICAST, 0) + attrs  # fmt: skip
        via = f" via {gateway}" if gateway else ""
        self.request(RTM_NEWROUTE, body, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                     f"adding route {dst}{via}")  # fmt: skip

    def neigh_add(self, index: int, ip: str, mac: str) -> None:
        family, packed = _ip(ip)
        body = NDMSG.pack(family, index, NUD_PERMANENT, 0, 0)
        body += _attr(NDA_DST, packed) + _attr(NDA_LLADDR, _mac(mac))
        self.request(RTM_NEWNEIGH, body, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                     f"adding neighbour {ip}")  # fmt: skip
