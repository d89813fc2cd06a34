"""Framing of the host/agent wire format, including garbage and oversize input."""

import json
import struct

import pytest

from agent import protocol as P


def frames(items):
    return [i for i in items if isinstance(i, P.Frame)]


def bad(items):
    return [i for i in items if isinstance(i, P.BadFrame)]


def test_roundtrip_message_and_data():
    wire = P.encode_msg({"id": 1, "op": "hello"}) + b"".join(P.encode_data(9, b"abc"))
    out = P.Decoder().feed(wire)
    assert [type(i) for i in out] == [P.Frame, P.Frame]
    assert out[0].message() == {"id": 1, "op": "hello"}
    assert (out[1].kind, out[1].stream, out[1].payload) == (P.DATA, 9, b"abc")


def test_byte_by_byte_feed_gives_same_frames():
    wire = P.encode_msg({"id": 7, "x": "é" * 100}) + P.encode(P.DATA, 5, b"")
    dec = P.Decoder()
    out = []
    for b in wire:
        out += dec.feed(bytes([b]))
    assert len(frames(out)) == 2 and not bad(out)
    assert out[1].payload == b""  # EOF frame


def test_large_data_is_chunked():
    data = bytes(range(256)) * 4096  # 1 MiB
    chunks = P.encode_data(3, data)
    assert len(chunks) == len(data) // P.CHUNK
    out = P.Decoder().feed(b"".join(chunks))
    assert b"".join(f.payload for f in out) == data


def test_garbage_before_frame_is_reported_and_skipped():
    wire = b"garbage!" + P.encode_msg({"id": 2, "op": "ps"})
    out = P.Decoder().feed(wire)
    assert len(bad(out)) == 1 and "bad magic" in bad(out)[0].reason
    assert frames(out)[0].message()["id"] == 2


def test_oversize_frame_is_rejected_and_skipped_in_pieces():
    dec = P.Decoder(max_payload=16)
    header = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.DATA, 1, 100)
    out = dec.feed(header + b"x" * 40)
    assert len(bad(out)) == 1 and "exceeds" in bad(out)[0].reason
    out = dec.feed(b"x" * 60 + P.encode_msg({"id": 3}))
    assert [f.message()["id"] for f in frames(out)] == [3]


@pytest.mark.parametrize(
    "payload,reason",
    [(b"{not json", "not valid JSON"), (b"[1,2]", "not a JSON object")],
)
def test_bad_message_payload(payload, reason):
    wire = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, len(payload)) + payload
    out = P.Decoder().feed(wire + P.encode_msg({"id": 4}))
    assert reason in bad(out)[0].reason
    assert frames(out)[0].message() == {"id": 4}


def test_wrong_version_and_kind_resync():
    v2 = struct.pack(">2sBBII", P.MAGIC, 99, P.MSG, 0, 2) + b"{}"
    k9 = struct.pack(">2sBBII", P.MAGIC, P.PROTOCOL_VERSION, 9, 0, 2) + b"{}"
    out = P.Decoder().feed(v2 + k9 + P.encode_msg({"id": 5}))
    reasons = " ".join(b.reason for b in bad(out))
    assert "version 99" in reasons and "kind 9" in reasons
    assert frames(out)[-1].message() == {"id": 5}


def test_encode_refuses_oversize_and_bad_kind():
    with pytest.raises(P.FrameError):
        P.encode(P.DATA, 1, b"x" * (P.MAX_PAYLOAD + 1))
    with pytest.raises(P.FrameError):
        P.encode(7, 1, b"")


def test_stream_ids():
    assert P.split_stream(P.stream_id(12, P.STDERR)) == (12, P.STDERR)


def test_replies():
    assert P.reply({"id": 3}, pid=4) == {"id": 3, "ok": True, "pid": 4}
    err = P.error_reply(3, "nope", "SpecError")
    assert err["ok"] is False and json.dumps(err)


def test_fields_are_checked_with_the_field_named():
    P.check_fields({"id": 1, "op": "signal", "proc": 3, "signal": 15})  # a proxy's request
    P.check_fields({"id": 2, "op": "create", "cid": "c", "spec": {}, "rootfs": "c/rootfs"})
    for msg, field in (
        ({"id": 1, "op": "attach", "proc": "x"}, "'proc'"),
        ({"id": 1, "op": "attach"}, "'proc' is missing"),
        ({"id": 1, "op": "signal", "cid": 5, "signal": 9}, "'cid'"),
        ({"id": 1, "op": "freeze", "cid": "c", "freeze": 1}, "'freeze'"),
        ({"id": 1, "op": "winsize", "proc": True, "rows": 1, "cols": 1}, "'proc'"),
        ({"id": "x", "op": "start", "cid": "c"}, "'id'"),
        ({"id": 1, "op": "nope"}, "unknown operation"),
    ):
        with pytest.raises(P.ProtocolError, match=field):
            P.check_fields(msg)


def test_an_oversize_length_is_fatal():
    d = P.Decoder()
    (bad,) = d.feed(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.MSG, 0, P.MAX_PAYLOAD + 1))
    assert isinstance(bad, P.BadFrame) and bad.fatal
    assert not d.buffered


def test_deep_nesting_is_a_bad_frame_not_a_crash():
    (bad,) = P.Decoder().feed(P.encode(P.MSG, 0, b"[" * 200_000))
    assert isinstance(bad, P.BadFrame) and "not valid JSON" in bad.reason
