"""The pod's network on the host: its namespace, the taps, and the tc redirects.

Owns, in the sandbox monitor (which lives in the pod's network namespace, as the process
proxies do, so that docker's libnetwork hook finds that namespace through the pid hyperpy
reports), everything between that namespace and QEMU, after Kata's ``tcfilter`` model:

- :func:`enter`: join the namespace the spec names (CRI's, ``--net=container:``), or make a
  new one (docker's default: libnetwork's prestart hook moves the veth into it);
- :func:`make_taps`: before QEMU starts (microvm has no hotplug), ``[network] interfaces``
  taps made in that namespace, handed to QEMU as file descriptors; they are not persistent,
  so they go away with QEMU;
- :func:`wire`: after the create hooks, each Ethernet interface that CNI or libnetwork put
  in the namespace is joined to a tap by an ingress qdisc and a u32 filter whose action is
  ``mirred egress redirect`` (both ways); the interface keeps its addresses on the host
  side, and what the guest must be given (MAC, MTU, addresses, routes, permanent neighbour
  entries) is returned for the agent (``agent/network.py`` applies it);
- :func:`unwire`: the qdiscs go when the VM does.

Netlink goes through pyroute2 (its ``IPRoute`` is a plain synchronous socket, created in
the namespace the monitor lives in); only the tap itself is made with /dev/net/tun's ioctl,
which pyroute2 can only do persistently. ``check_path`` is what ``create`` checks before a
VM boots; it imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import struct
from typing import NamedTuple

from hyperpy.errors import HyperpyError, SpecError

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
ARPHRD_ETHER = 1
ETH_P_ALL = 0x0003
INGRESS = 0xFFFF0000
TAP_PREFIX = "hptap"
# The MAC each guest NIC boots with: the agent finds NIC i by it (02: locally administered).
BOOT_MAC = "02:68:70:00:00:{:02x}"
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2


class NetworkError(HyperpyError):
    """The pod's network could not be set up; the message names the interface or field."""


def check_path(path: str, pointer: str) -> None:
    """A network namespace path from the spec: it must exist and be a network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SpecError(
            f"network namespace {path!r} cannot be opened ({exc.strerror}): create it first "
            "(ip netns add, or the CNI plugin), or leave out the path for a new one",
            pointer,
        ) from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise SpecError(f"{path!r} is not a network namespace", pointer)


def plan(spec: dict) -> tuple[dict, str]:
    """For a container with a VM of its own: the guest's spec (its network namespace a new
    one in the guest, where the agent puts the NICs) and the host namespace the pod's
    network comes from (``""``: a new one, made by the monitor)."""
    nss = (spec.get("linux") or {}).get("namespaces") or []
    for i, ns in enumerate(nss):
        if ns.get("type") != "network":
            continue
        path = ns.get("path") or ""
        if not path:
            return spec, ""
        pointer = f"/linux/namespaces/{i}/path"
        check_path(path, pointer)
        if _same_file(path, "/proc/self/ns/net"):
            raise SpecError(
                f"{path!r} is the host's own network namespace: a VM cannot share the "
                "host's network; give the container a network namespace of its own",
                pointer,
            )
        guest = json.loads(json.dumps(spec))
        del guest["linux"]["namespaces"][i]["path"]
        return guest, path
    raise SpecError(
        "the container has no network namespace (the host's network, as docker's "
        "--network host or a Kubernetes hostNetwork pod asks): a VM cannot share the host's "
        'network; add {"type": "network"} to linux.namespaces (loopback only, or what a '
        "prestart hook or CNI puts in it), or run such containers with runc",
        "/linux/namespaces",
    )


def _same_file(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def enter(path: str) -> None:
    """Put the calling process (the monitor, before it starts any thread) in the pod's
    network namespace: ``path``'s, or a new one with its loopback up."""
    from agent import linux

    try:
        if path:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                linux.setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            return
        linux.unshare(CLONE_NEWNET)
        linux.loopback_up()
    except OSError as exc:
        what = f"join network namespace {path}" if path else "make a network namespace"
        raise NetworkError(f"cannot {what}: {exc}") from None


class Tap(NamedTuple):
    name: str
    fd: int
    mac: str  # the guest NIC's boot MAC


def make_taps(count: int) -> list[Tap]:
    """``count`` taps in the current namespace, each an open fd (closed: the tap is gone)."""
    taps: list[Tap] = []
    try:
        for i in range(count):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            name = f"{TAP_PREFIX}{i}"
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
            except OSError as exc:
                os.close(fd)
                raise NetworkError(f"cannot make tap {name}: {exc.strerror}") from None
            taps.append(Tap(name, fd, BOOT_MAC.format(i)))
    except BaseException:
        close_taps(taps)
        raise
    return taps


def close_taps(taps: list[Tap]) -> None:
    for tap in taps:
        with contextlib.suppress(OSError):
            os.close(tap.fd)


def _attr(msg, name: str, default=None):  # noqa: ANN001, ANN202 - pyroute2's messages
    value = msg.get_attr(name)
    return default if value is None else value


def _kind(link) -> str:  # noqa: ANN001
    info = link.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or "?"


def interfaces() -> list[str]:
    """The names of the current network namespace's interfaces but loopback."""
    return [name for _, name in socket.if_nameindex() if name != "lo"]


def wire(taps: list[Tap]) -> tuple[list[str], dict]:
    """Join each of the namespace's interfaces to a tap; return the wired interfaces' names
    and the guest's configuration (``agent/network.py``'s input)."""
    tap_names = {t.name for t in taps}
    if {name for _, name in socket.if_nameindex()} <= tap_names | {"lo"}:
        return [], {"interfaces": [], "routes": [], "neighbors": []}  # loopback only
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = sorted(ipr.get_links(), key=lambda m: m["index"])
        wanted = []
        for link in links:
            name = _attr(link, "IFLA_IFNAME", "")
            if name == "lo" or name in tap_names:
                continue
            if link["ifi_type"] != ARPHRD_ETHER:
                raise NetworkError(
                    f"interface {name} ({_kind(link)}) in the pod's network namespace is not "
                    "an Ethernet device and cannot be redirected to the VM's tap: use a veth, "
                    "macvlan or ipvlan (CNI's bridge, ptp or macvlan plugins)"
                )
            wanted.append(link)
        if len(wanted) > len(taps):
            extra = ", ".join(_attr(m, "IFLA_IFNAME", "?") for m in wanted[len(taps) :])
            raise NetworkError(
                f"the pod's network namespace has {len(wanted)} interfaces but the VM was "
                f"planned with {len(taps)} NIC(s): {extra} cannot reach the guest; raise "
                "[network] interfaces in the hyperpy config"
            )
        interfaces, wired = [], []
        what = "reading the namespace's routes"
        by_index = {m["index"]: _attr(m, "IFLA_IFNAME", "") for m in wanted}
        try:
            for link, tap in zip(wanted, taps, strict=False):
                name = by_index[link["index"]]
                what = f"redirecting {name} to {tap.name}"
                tap_index = ipr.link_lookup(ifname=tap.name)[0]
                mtu = _attr(link, "IFLA_MTU", 1500)
                ipr.link("set", index=tap_index, mtu=mtu, state="up")
                for a, b in ((link["index"], tap_index), (tap_index, link["index"])):
                    ipr.tc("add", "ingress", a, INGRESS)
                    if a == link["index"]:
                        wired.append(name)  # its qdisc is ours to remove from now on
                    ipr.tc("add-filter", "u32", a, parent=INGRESS, protocol=ETH_P_ALL,
                           target=0x10001, keys=["0x0/0x0+0"],
                           action={"kind": "mirred", "direction": "egress",
                                   "action": "redirect", "ifindex": b})  # fmt: skip
                what = "reading the namespace's routes"
                interfaces.append(
                    {
                        "boot_mac": tap.mac,
                        "name": name,
                        "mac": _attr(link, "IFLA_ADDRESS", ""),
                        "mtu": mtu,
                        "addresses": _addresses(ipr, link["index"]),
                    }
                )
            routes = guest_routes(ipr.get_routes(table=RT_TABLE_MAIN), by_index)
            neighbors = [
                {
                    "dev": by_index[n["ifindex"]],
                    "ip": _attr(n, "NDA_DST"),
                    "mac": _attr(n, "NDA_LLADDR"),
                }  # fmt: skip
                for n in ipr.get_neighbours()
                if n["ifindex"] in by_index
                and n["state"] & 0x80  # NUD_PERMANENT
                and _attr(n, "NDA_LLADDR")
            ]
        except Exception as exc:  # noqa: BLE001 - netlink's, or the tap gone with QEMU
            unwire(wired)
            raise NetworkError(f"{what} failed: {exc}") from None
    return wired, {"interfaces": interfaces, "routes": routes, "neighbors": neighbors}


def _addresses(ipr, index: int) -> list[dict]:  # noqa: ANN001
    out = []
    for a in ipr.get_addr(index=index):
        ip = _attr(a, "IFA_ADDRESS")
        if not ip or ipaddress.ip_address(ip).is_link_local:
            continue  # the guest makes its own IPv6 link-local address
        out.append({"ip": ip, "prefixlen": a["prefixlen"], "family": 6 if ":" in ip else 4})
    return out


def guest_routes(routes, by_index: dict[int, str]) -> list[dict]:  # noqa: ANN001
    """The namespace's routes through the wired interfaces, as the guest adds them: not
    those the kernel makes from an address (it makes them in the guest too), not IPv6's
    link-local and multicast ones; device routes before those through a gateway."""
    out = []
    for r in routes:
        oif = _attr(r, "RTA_OIF")
        if oif not in by_index or r["proto"] == RTPROT_KERNEL or r["type"] != 1:
            continue
        family = 6 if r["family"] == socket.AF_INET6 else 4
        dst = _attr(r, "RTA_DST")
        dst = f"{dst}/{r['dst_len']}" if dst else ("::/0" if family == 6 else "0.0.0.0/0")
        if family == 6 and ipaddress.ip_network(dst).is_link_local:
            continue
        route = {"dst": dst, "dev": by_index[oif], "family": family,
                 "scope": r["scope"]}  # fmt: skip
        for key, attr in (("gateway", "RTA_GATEWAY"), ("src", "RTA_PREFSRC"),
                          ("metric", "RTA_PRIORITY")):  # fmt: skip
            if _attr(r, attr) is not None:
                route[key] = _attr(r, attr)
        out.append(route)
    return sorted(out, key=lambda r: "gateway" in r)


def unwire(names: list[str]) -> None:
    """Remove the ingress qdiscs (and their filters) from the wired interfaces."""
    if not names:
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for name in names:
            for index in ipr.link_lookup(ifname=name):
                with contextlib.suppress(Exception):
                    ipr.tc("del", "ingress", index, INGRESS)
