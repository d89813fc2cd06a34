"""The monitor's end of the agent channel against a socket peer standing in for a hostile
guest: an oversize frame ends the channel naming it, unasked-for replies are counted
warnings, and a guest that does not read gets no more requests queued."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agent import protocol as P
from hyperpy.agent_link import SEND_LIMIT, AgentLink
from hyperpy.errors import AgentError


async def _link() -> tuple[AgentLink, socket.socket]:
    ours, guest = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    return AgentLink(reader, writer), guest


def test_an_oversize_frame_ends_the_channel_naming_it():
    async def go() -> str:
        link, guest = await _link()
        pump = asyncio.ensure_future(link.pump())
        guest.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, 0xFFFFFFFF))
        why = await asyncio.wait_for(link.closed, 10)
        await asyncio.wait_for(pump, 10)
        guest.close()
        return why

    why = asyncio.run(go())
    assert "broke the protocol" in why and "4294967295 bytes exceeds" in why, why


def test_unasked_for_replies_are_counted_not_each_logged():
    async def go() -> int:
        link, guest = await _link()
        seen: list[str] = []
        link.warn = lambda fmt, *args: seen.append(fmt)
        pump = asyncio.ensure_future(link.pump())
        msg = P.encode_msg({"id": 99, "ok": False, "error": "x"})
        guest.sendall(msg * 500)
        guest.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(pump, 10)
        guest.close()
        return len(seen)

    assert asyncio.run(go()) == 500  # each one through the pod's rate-limited warnings


def test_a_request_is_refused_while_the_agent_does_not_read():
    async def go() -> None:
        link, guest = await _link()
        link.writer.write(b"\0" * 2 * SEND_LIMIT)  # what a deaf guest left unread
        with pytest.raises(AgentError, match="has not read"):
            await link.request(P.OP_PS, timeout=5, cid="c")
        guest.close()
        link.writer.transport.abort()

    asyncio.run(go())
