"""What the monitor keeps of a process's output before its proxy attaches: bounded, and
nothing once the exit went out or the proxy left (the guest writes these frames)."""

from __future__ import annotations

from agent import protocol as P
from hyperpy.agent_link import PENDING_LIMIT, Attachment


def test_kept_output_is_bounded_empty_frames_included():
    att = Attachment()
    eof = P.encode(P.DATA, 5, b"")
    for _ in range(PENDING_LIMIT // len(eof) + 1000):
        att.deliver(eof)
    assert att.pending_bytes <= PENDING_LIMIT and att.dropped >= 1000 * len(eof)
    big = P.encode(P.DATA, 5, b"x" * P.CHUNK)
    att2 = Attachment()
    for _ in range(PENDING_LIMIT // len(big) + 10):
        att2.deliver(big)
    assert att2.pending_bytes <= PENDING_LIMIT


def test_nothing_is_kept_once_the_process_is_done():
    att = Attachment()
    att.done = True
    att.deliver(P.encode(P.DATA, 5, b"late"))
    assert not att.pending and att.dropped
