"""The pod's network in the guest: the NICs the host planned, configured as its veths are.

Owns applying the host's ``network`` request (``hyperpy/network.py`` reads it from the pod's
network namespace on the host): each virtio-net NIC, found by the MAC it booted with, moves
into the pod's network namespace (the sandbox container's; the pod's other containers join
it), takes the host interface's name, MAC and MTU, comes up, and gets its addresses, then
the routes (device routes first) and permanent neighbour entries. A NIC the host did not
wire stays down in the agent's own namespace, where no container is: a container without
wired interfaces sees only its loopback, as under runc.
"""

from __future__ import annotations

import os

from agent.netlink import Socket

SYS_NET = "/sys/class/net"


def _nics_by_mac() -> dict[str, str]:
    out = {}
    for name in os.listdir(SYS_NET):
        try:
            with open(f"{SYS_NET}/{name}/address") as f:
                out[f.read().strip().lower()] = name
        except OSError:
            continue
    return out


def configure(target: int, cfg: dict) -> None:
    """Give network namespace ``target`` (an fd: the pod's) the interfaces in ``cfg``."""
    nics = _nics_by_mac()
    interfaces = cfg["interfaces"]
    with Socket() as own:
        for i, iface in enumerate(interfaces):
            nic = nics.get(str(iface["boot_mac"]).lower())
            if nic is None:
                raise ValueError(f"no NIC with MAC {iface['boot_mac']} in the guest")
            index = own.link_index(nic)
            # a name of our own first: the host's names may be the guest's in another order
            own.link_set(index, name=f"hpnic{i}")
            own.link_set(index, netns_fd=target)
    with Socket(target) as ns:
        index_of = {}
        for i, iface in enumerate(interfaces):
            index = ns.link_index(f"hpnic{i}")
            ns.link_set(index, name=iface["name"], mac=iface["mac"], mtu=int(iface["mtu"]))
            ns.link_set(index, up=True)
            index_of[iface["name"]] = index
            for addr in iface.get("addresses") or []:
                ns.addr_add(index, addr["ip"], int(addr["prefixlen"]))
        for route in cfg["routes"]:
            if route.get("dev") not in index_of:
                continue
            ns.route_add(index_of[route["dev"]], route["dst"], int(route.get("scope", 0)),
                         route.get("gateway") or "", route.get("src") or "",
                         int(route.get("metric", -1)))  # fmt: skip
        for n in cfg["neighbors"]:
            if n.get("dev") in index_of:
                ns.neigh_add(index_of[n["dev"]], n["ip"], n["mac"])
