"""The client protocol object with no sockets (bytes in, events out), then the SDK through a real server
that adds what today's models do not know."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from utuvox.client import connect
from utuvox.protocol import client_protocol as cp
from utuvox.protocol import core as p
from utuvox.protocol import files as f
from utuvox.protocol.lenient import UnknownFrame, decode


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def sent(data: bytes) -> dict[str, Any]:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return json.loads(data)


def test_requests_get_fresh_ids_and_their_replies_come_back_with_their_tags() -> None:
    proto = cp.ClientProtocol()
    first = sent(proto.send(p.Ping(), tag="a"))
    second = sent(proto.send(p.Join(room="general"), tag="b"))
    assert (first, second["type"], second["room"]) == ({"type": "ping", "id": 1}, "join", "general")
    assert [r.type for r in proto.in_flight] == ["ping", "join"]
    events = proto.receive_data(line({"type": "pong", "re": 1}))
    assert len(events) == 1 and isinstance(events[0], cp.Answer)
    assert events[0].tag == "a" and events[0].request.id == 1 and isinstance(events[0].reply, p.Pong)
    assert [r.type for r in proto.in_flight] == ["join"]


def test_ids_can_come_from_a_source_shared_between_connections() -> None:
    ids = iter(range(40, 50))
    one, two = cp.ClientProtocol(ids=ids), cp.ClientProtocol(ids=ids)
    assert sent(one.send(p.Ping()))["id"] == 40
    assert sent(two.send(p.Ping()))["id"] == 41


def test_a_frame_cut_anywhere_is_put_back_together() -> None:
    proto = cp.ClientProtocol()
    proto.send(p.Ping(), tag="t")
    data = line({"type": "notice", "text": "welcome"}) + line({"type": "pong", "re": 1})
    events: list[cp.ClientEvent] = []
    for i in range(len(data)):
        events += proto.receive_data(data[i:i + 1])
    assert [type(e) for e in events] == [cp.Received, cp.Answer]
    notice = events[0].frame if isinstance(events[0], cp.Received) else None
    assert isinstance(notice, p.Notice) and notice.text == "welcome"


def test_several_frames_in_one_chunk_come_out_in_order() -> None:
    proto = cp.ClientProtocol()
    for _ in range(3):
        proto.send(p.Ping())
    chunk = b"".join(line({"type": "pong", "re": i}) for i in (1, 2, 3)) + b'{"type": "po'
    events = proto.receive_data(chunk)
    assert [e.request.id for e in events if isinstance(e, cp.Answer)] == [1, 2, 3]
    assert proto.receive_data(b'ng"}\n')[0] == cp.Received(p.Pong())


@pytest.mark.parametrize("order", [(1, 2, 3, 4), (4, 2, 3, 1)])
def test_pipelined_requests_are_matched_whatever_the_order_of_their_answers(order: tuple[int, ...]) -> None:
    proto = cp.ClientProtocol()
    tags = {proto.send(p.Message(text=f"m{i}"), tag=f"t{i}") and i: f"t{i}" for i in range(1, 5)}
    events = proto.receive_data(b"".join(line({"type": "ok", "re": i, "seq": 10 + i}) for i in order))
    answers = [e for e in events if isinstance(e, cp.Answer)]
    assert [(a.tag, a.request.text, a.reply.seq) for a in answers] == [  # type: ignore[attr-defined]
        (tags[i], f"m{i}", 10 + i) for i in order]
    assert proto.in_flight == []


def test_a_reply_no_request_waits_for_is_passed_on_as_it_is() -> None:
    proto = cp.ClientProtocol()
    proto.send(p.Ping())
    events = proto.receive_data(line({"type": "pong", "re": 7}) + line({"type": "pong", "re": "mine"}))
    assert [type(e) for e in events] == [cp.Received, cp.Received]
    assert len(proto.in_flight) == 1


def test_a_reply_with_a_field_this_client_does_not_know_still_answers_its_request() -> None:
    proto = cp.ClientProtocol()
    proto.send(p.Message(text="hi"), tag="m")
    events = proto.receive_data(line({"type": "ok", "re": 1, "seq": 3, "room": "general", "new_field": {"a": 1}}))
    assert events == [cp.Answer(events[0].request, p.Ok(re=1, seq=3, room="general"), "m")]  # type: ignore[union-attr]


def test_unknown_fields_are_ignored_at_every_depth_and_unknown_entries_of_a_list_left_out() -> None:
    event = {"type": "message", "ts": "2026-01-01T00:00:00Z", "room": "general", "seq": 4, "user": "bob",
             "text": "hi", "reactions": ["+1"]}
    joined = {"type": "joined", "re": 9, "room": "general", "mood": "calm",
              "history": [event, {"type": "reaction", "seq": 5, "room": "general"}], "last_seq": 5}
    reply = decode(json.dumps(joined))
    assert isinstance(reply, p.Joined) and reply.room == "general" and reply.last_seq == 5
    assert [(e.type, e.seq, e.user) for e in reply.history] == [("message", 4, "bob")]
    files = decode(json.dumps({"type": "file_list", "room": "r", "files": [
        {"name": "a", "original": "a", "room": "r", "size": 1, "sha256": "x", "uploader": "bob",
         "uploaded_at": "2026-01-01T00:00:00Z", "thumbnail": "..."}]}))
    assert isinstance(files, f.FileList) and files.files[0].uploader == "bob"


def test_an_unknown_type_is_an_event_of_its_own_and_the_connection_goes_on() -> None:
    proto = cp.ClientProtocol()
    proto.send(p.Ping(), tag="p")
    events = proto.receive_data(line({"type": "reaction", "room": "general", "emoji": "+1"})
                                + line({"type": "pong", "re": 1}))
    assert isinstance(events[0], UnknownFrame) and events[0].type == "reaction"
    assert events[0].data["emoji"] == "+1"
    assert isinstance(events[1], cp.Answer) and events[1].tag == "p"
    assert not proto.closed


def test_an_answer_of_an_unknown_type_fails_its_request_with_a_clear_reason() -> None:
    proto = cp.ClientProtocol()
    proto.send(p.Ping(), tag="p")
    events = proto.receive_data(line({"type": "pong_v2", "re": 1}))
    assert events == [cp.RequestFailed(events[0].request, "p", "Unexpected 'pong_v2' in answer to 'ping'.",  # type: ignore[union-attr]
                                       lost=False)]
    assert proto.in_flight == []


def test_a_malformed_frame_is_reported_and_skipped() -> None:
    proto = cp.ClientProtocol()
    events = proto.receive_data(b"{not json\n" + line({"re": 1}) + line({"type": "error", "re": 1}) + b"\n"
                                + line({"type": "notice", "text": "still here"}))
    assert [type(e) for e in events] == [cp.BadFrame] * 4 + [cp.Received]
    assert isinstance(events[1], cp.BadFrame) and events[1].reason == "The frame has no 'type' field."


def test_closing_with_requests_pending_fails_each_of_them_then_says_closed() -> None:
    proto = cp.ClientProtocol()
    for tag in "abc":
        proto.send(p.Ping(), tag=tag)
    proto.receive_data(line({"type": "pong", "re": 2}))
    events = proto.receive_data(b"")
    assert events == [cp.RequestFailed(events[0].request, "a", "the server closed the connection", lost=True),  # type: ignore[union-attr]
                      cp.RequestFailed(events[1].request, "c", "the server closed the connection", lost=True),  # type: ignore[union-attr]
                      cp.Closed("the server closed the connection")]
    assert proto.closed and proto.in_flight == []
    assert proto.receive_data(line({"type": "pong", "re": 1})) == []
    assert proto.close("again") == []
    with pytest.raises(cp.ConnectionEnded):
        proto.send(p.Ping())


def test_the_goodbye_is_the_reason_the_connection_ended() -> None:
    proto = cp.ClientProtocol()
    proto.send(p.Ping(), tag="p")
    events = proto.receive_data(line({"type": "bye", "reason": "You were kicked.", "code": "kick"}) + b"")
    assert events == [cp.Received(p.Goodbye(reason="You were kicked.", code="kick"))]
    assert proto.goodbye is not None and proto.goodbye.code == "kick"
    assert proto.receive_data(b"")[-1] == cp.Closed("You were kicked.")


def test_a_line_longer_than_the_limit_ends_the_connection() -> None:
    proto = cp.ClientProtocol(max_frame=100)
    proto.send(p.Ping(), tag="p")
    events = proto.receive_data(b"x" * 101)
    assert [type(e) for e in events] == [cp.RequestFailed, cp.Closed]
    assert events[-1] == cp.Closed("the server sent a frame larger than 100 bytes")


def test_websocket_messages_are_one_frame_each_and_requests_carry_no_newline() -> None:
    proto = cp.ClientProtocol("messages")
    assert proto.send(p.Ping(), tag="p") == b'{"type":"ping","id":1}'
    events = proto.receive_data('{"type":"pong","re":1}')
    assert isinstance(events[0], cp.Answer) and events[0].tag == "p"
    assert isinstance(proto.receive_data("")[0], cp.BadFrame)  # an empty message is no frame, not the end
    assert proto.close("the WebSocket is closed") == [cp.Closed("the WebSocket is closed")]
    with pytest.raises(ValueError, match="framing"):
        cp.ClientProtocol("frames")  # type: ignore[arg-type]


def _download_frames() -> list[dict[str, Any]]:
    return [
        {"type": "download_start", "re": 1, "download_id": "d1", "name": "a.txt", "original": "a.txt", "room": "r",
         "size": 2, "sha256": "x", "chunk_size": 1},
        {"type": "download_chunk", "download_id": "d1", "offset": 0, "data": "YQ=="},
        {"type": "notice", "text": "between"},
        {"type": "download_chunk", "download_id": "d1", "offset": 1, "data": "Yg=="},
        {"type": "download_end", "download_id": "d1", "name": "a.txt", "size": 2},
    ]


def test_a_download_s_frames_go_to_the_request_that_started_it() -> None:
    proto = cp.ClientProtocol()
    proto.send(f.Download(name="a.txt"), tag="dl")
    events = proto.receive_data(b"".join(line(x) for x in _download_frames()))
    assert [type(e).__name__ for e in events] == ["Answer", "TransferFrame", "Received", "TransferFrame",
                                                  "TransferFrame"]
    assert all(e.tag == "dl" and e.download_id == "d1" for e in events if isinstance(e, cp.TransferFrame))
    # Once ended, a frame with the same download_id belongs to nothing.
    assert isinstance(proto.receive_data(line(_download_frames()[1]))[0], cp.Received)


def test_a_dropped_download_s_remaining_frames_are_left_out() -> None:
    proto = cp.ClientProtocol()
    proto.send(f.Download(name="a.txt"), tag="dl")
    frames = _download_frames()
    proto.receive_data(line(frames[0]) + line(frames[1]))
    proto.drop_download("d1")
    events = proto.receive_data(b"".join(line(x) for x in frames[2:]))
    assert [type(e) for e in events] == [cp.Received]


# --- through a real server ----------------------------------------------------------------------


async def _newer_server(port_holder: list[int], task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A stand-in for a newer server: answers every request with a known reply that carries a field
    today's models do not have, after an event of a type they do not know."""

    async def serve(stream: trio.SocketStream) -> None:
        buf = b""
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    request = json.loads(raw)
                    out = line({"type": "sparkle", "room": "general", "colour": "gold"})
                    if request["type"] == "ping":
                        out += line({"type": "pong", "re": request["id"], "server_time": 1})
                    elif request["type"] == "login":
                        out += line({"type": "logged_in", "re": request["id"], "user": request["username"],
                                     "badges": ["early"]})
                    else:
                        out += line({"type": "ok", "re": request["id"], "room": "general", "seq": 1,
                                     "thread": None})
                    await stream.send_all(out)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port_holder.append(listeners[0].socket.getsockname()[1])
    task_status.started()
    await trio.serve_listeners(serve, listeners)


async def test_the_sdk_reads_replies_with_new_fields_and_skips_new_event_types() -> None:
    port: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(_newer_server, port)
        with trio.fail_after(10):
            async with connect(f"tcp://127.0.0.1:{port[0]}", keepalive=None) as client:
                logged_in = await client.login("bob", "pw")
                assert (logged_in.user, client.user) == ("bob", "bob")
                ok = await client.message("hello", room="general")
                assert ok.seq == 1
                assert await client.ping() >= 0
                assert client.drain_events() == []  # the unknown events were skipped, not handed over
        nursery.cancel_scope.cancel()


async def test_the_sdk_still_talks_to_the_real_server(server: Any) -> None:
    with trio.fail_after(20):
        async with connect(f"tcp://127.0.0.1:{server.tcp_port}") as alice, \
                connect(f"ws://127.0.0.1:{server.ws_port}") as bob:
            await alice.register("alice", "password1")
            await bob.register("bob", "password2")
            await alice.create("lobby")
            await bob.join("lobby")
            pending = [await alice.message(f"m{i}") for i in range(5)]
            seqs = [ok.seq or 0 for ok in pending]
            assert seqs == sorted(seqs) and 0 not in seqs
            texts: list[str] = []
            while len(texts) < 5:
                event = await bob.next_event(timeout=10)
                if isinstance(event, p.MessageEvent):
                    texts.append(event.text)
            assert texts == [f"m{i}" for i in range(5)]
