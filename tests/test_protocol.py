"""The one schema: every model round-trips through both codecs, and no input makes a codec raise
anything but the project's own error."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utuvox.protocol import Code, ProtocolError, json_codec, text_codec
from utuvox.protocol import core as p
from utuvox.protocol.schema import CLIENT_FRAME, REQUEST_TYPES, SERVER_FRAME, json_schema

REQUEST_SAMPLES = [
    p.Register(username="bob", password="pw", id=1),
    p.Register(username="root", password="s3cret", admin_key="k", bot=True, id="a"),
    p.Login(username="bob", password="pw"),
    p.ChangePassword(old_password="a", new_password="b"),
    p.Create(room="general"),
    p.Join(room="general", id=7),
    p.Topic(room="general", text="hello"), p.Topic(room="general"),
    p.PrivateHistory(user="bob", before=5, limit=10),
    p.Leave(),
    p.Leave(room="general"),
    p.Message(text="hello world"),
    p.Message(text="hi", room="random"),
    p.Msg(to="alice", text="psst"),
    p.History(room="general", before=100, limit=20),
    p.ListAllUsers(), p.ListUsersInRoom(room="general"), p.ListAllRooms(),
    p.WhoAmI(), p.WhereAmI(), p.Help(), p.Quit(), p.Ping(id=3),
]
SERVER_SAMPLES = [
    p.Ok(re=1), p.Ok(re=2, room="general", seq=5),
    p.Error(re=1, code="auth_failed", message="Invalid username or password."),
    p.LoggedIn(re=1, user="bob", registered=True),
    p.Joined(re=2, room="general", created=True, last_seq=1,
             history=[p.JoinEvent(room="general", seq=1, user="bob")]),
    p.Left(re=3, room="general"),
    p.RoomTopic(re=4, room="general", topic="hello", by="bob"),
    p.TopicEvent(room="general", user="bob", topic="hello"),
    p.PrivateHistoryPage(re=5, user="bob", more=False,
                         messages=[p.PrivateMessage(user="bob", to="al", text="hi", seq=3)]),
    p.HistoryPage(re=4, room="general", more=False,
                  events=[p.MessageEvent(room="general", seq=2, user="bob", text="hi"),
                          p.FileEvent(room="general", seq=3, user="bob", name="n", original="o", size=1,
                                      sha256="0" * 64)]),
    p.UserList(users=[p.UserInfo(name="bob", is_bot=True)]),
    p.UserList(room="general", users=[]),
    p.RoomList(rooms=[p.RoomInfo(name="general", members=2)]),
    p.WhoAmIReply(user=None), p.WhereAmIReply(room="general", rooms=["general"]),
    p.HelpReply(commands=["/help - Help."]), p.Pong(re=9), p.Goodbye(reason="bye", code="quit"),
    p.MessageEvent(room="general", seq=1, user="bob", text="hello"),
    p.LeaveEvent(room="general", seq=4, user="bob"),
    p.PrivateMessage(user="bob", to="alice", text="psst"),
    p.RoomDeleted(room="general", by="admin"), p.Announcement(text="maintenance", by="console:root"),
    p.Notice(text="Welcome"),
]


def test_every_request_type_has_a_sample() -> None:
    sampled = {s.type for s in REQUEST_SAMPLES}
    core_types = {m.model_fields["type"].default for m in p.REQUESTS}
    assert core_types <= sampled


@pytest.mark.parametrize("frame", REQUEST_SAMPLES, ids=lambda f: f.type)
def test_requests_round_trip(frame: p.Request) -> None:
    assert json_codec.decode_request(json_codec.encode(frame)) == frame


@pytest.mark.parametrize("frame", SERVER_SAMPLES, ids=lambda f: f.type)
def test_server_frames_round_trip(frame: object) -> None:
    data = json_codec.encode(frame)  # type: ignore[arg-type]
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json_codec.decode_server_frame(data) == frame


@pytest.mark.parametrize("frame", SERVER_SAMPLES, ids=lambda f: f.type)
def test_server_frames_render_as_stamped_text(frame: object) -> None:
    text = text_codec.render(frame)  # type: ignore[arg-type]
    for line in text.splitlines():
        assert line[0] == "[" and line[20:22] == "] ", line


def test_text_commands_parse_to_the_same_models_as_json() -> None:
    assert text_codec.parse_line("/register bob pw") == p.Register(username="bob", password="pw")
    assert text_codec.parse_line("/register bob pw KEY") == p.Register(username="bob", password="pw", admin_key="KEY")
    assert text_codec.parse_line("/join general") == p.Join(room="general")
    assert text_codec.parse_line("/leave") == p.Leave()
    assert text_codec.parse_line("/message hello  there") == p.Message(text="hello  there")
    assert text_codec.parse_line("plain words") == p.Message(text="plain words")
    assert text_codec.parse_line("/msg alice hi you") == p.Msg(to="alice", text="hi you")
    assert text_codec.parse_line("/history general 20") == p.History(room="general", limit=20)
    assert text_codec.parse_line("/LIST_ALL_ROOMS\r") == p.ListAllRooms()


@pytest.mark.parametrize(("line", "code"), [
    ("/nope", Code.UNKNOWN_COMMAND),
    ("/login bob", Code.BAD_REQUEST),
    ("/join two words", Code.BAD_REQUEST),
    ("/join bad/name", Code.BAD_REQUEST),
    ("/history general many", Code.BAD_REQUEST),
    ("   ", Code.EMPTY),
])
def test_bad_text_lines_get_a_code(line: str, code: Code) -> None:
    with pytest.raises(ProtocolError) as err:
        text_codec.parse_line(line)
    assert err.value.code == code


@pytest.mark.parametrize(("data", "code"), [
    (b"{", Code.BAD_JSON),
    (b"[1, 2]", Code.BAD_JSON),
    (b'"str"', Code.BAD_JSON),
    (b'{"id": 1}', Code.UNKNOWN_TYPE),
    (b'{"type": "fly"}', Code.UNKNOWN_TYPE),
    (b'{"type": "login", "username": "bob"}', Code.BAD_REQUEST),
    (b'{"type": "join", "room": "a b"}', Code.BAD_REQUEST),
    (b'{"type": "join", "room": "ok", "extra": 1}', Code.BAD_REQUEST),
    (b'{"type": "message", "text": ""}', Code.BAD_REQUEST),
    (b"\xff\xfe", Code.BAD_JSON),
    (b"[" * 100_000, Code.BAD_JSON),
])
def test_bad_json_gets_a_code(data: bytes, code: Code) -> None:
    with pytest.raises(ProtocolError) as err:
        json_codec.decode_request(data)
    assert err.value.code == code


def test_error_keeps_the_request_id() -> None:
    with pytest.raises(ProtocolError) as err:
        json_codec.decode_request(b'{"type": "login", "id": 42}')
    assert err.value.re == 42


def test_names_are_validated() -> None:
    for good in ["bob", "Bob_2", "a.b-c", "x" * 32]:
        assert p.Join(room=good).room == good
    for bad in ["", " bob", "bob ", "a/b", "..", "x" * 33, "b\x00b", "ümlaut", "-dash", "a\nb"]:
        with pytest.raises(ValueError):
            p.Join(room=bad)


def test_text_render_neutralises_terminal_escapes() -> None:
    line = text_codec.render(p.MessageEvent(room="r", seq=1, user="bob", text="\x1b[2Jgone\x07\r"), current_room="r")
    assert "\x1b" not in line and "\x07" not in line and "\r" not in line
    assert line.endswith("bob: \ufffd[2Jgone\ufffd\ufffd\n")


def test_message_from_another_room_names_the_room() -> None:
    event = p.MessageEvent(room="random", seq=1, user="bob", text="hi")
    assert text_codec.render(event, current_room="general").endswith("] [random] bob: hi\n")
    assert text_codec.render(event, current_room="random").endswith("] bob: hi\n")


def test_json_schema_covers_every_request() -> None:
    schema = json.dumps(json_schema())
    for model in REQUEST_TYPES:
        assert f'"{model.model_fields["type"].default}"' in schema


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_json_codec_never_raises_foreign_errors_on_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        json_codec.decode_request(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([m.model_fields["type"].default for m in REQUEST_TYPES]),
       st.dictionaries(st.sampled_from(["id", "room", "text", "username", "password", "to", "limit", "before",
                                        "admin_key", "bot", "x"]), json_values, max_size=5))
def test_json_codec_on_structured_garbage(kind: str, fields: dict) -> None:
    data = json.dumps({"type": kind, **fields})
    try:
        frame = json_codec.decode_request(data)
    except ProtocolError as exc:
        assert exc.code in {c.value for c in Code}
    else:
        assert CLIENT_FRAME.validate_json(json_codec.encode(frame)) == frame


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_text_codec_never_raises_foreign_errors(line: str) -> None:
    try:
        request = text_codec.parse_line(line)
    except ProtocolError:
        return
    assert json_codec.decode_request(json_codec.encode(request)) == request


def test_server_adapter_rejects_client_frames() -> None:
    with pytest.raises(ValueError):
        SERVER_FRAME.validate_python({"type": "login", "username": "bob", "password": "pw"})
