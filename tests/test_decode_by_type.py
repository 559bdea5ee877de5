"""A frame that names its type first is validated by that type's model directly (a shortcut past the
union); whatever the frame, valid or not, the answer is the union's: the same request, or the same error
code and wording."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from utuvox.protocol import ProtocolError, json_codec
from utuvox.protocol.schema import CLIENT_FRAME, REQUESTS_BY_TYPE

TYPES = sorted(REQUESTS_BY_TYPE)
values = (st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.text(max_size=12)
          | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
fields = st.sampled_from(["id", "text", "room", "to", "username", "password", "limit", "before", "after", "action",
                          "notice", "tags", "topic", "name", "bogus", "type"])


def union_answer(data: bytes | str) -> Any:
    """What the union alone says of ``data``: the request, or ``(code, message)``."""
    try:
        return CLIENT_FRAME.validate_json(data)
    except ValidationError as exc:
        return json_codec._explain(exc)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return "bad_json", "A frame must be one JSON object."


def answer(data: bytes | str) -> Any:
    try:
        return json_codec.decode_request(data)
    except ProtocolError as exc:
        return exc.code, exc.message


@given(st.sampled_from([*TYPES, "nonsense", "Message"]), st.lists(st.tuples(fields, values), max_size=5),
       st.sampled_from([(",", ":"), (", ", ": "), (",", " : ")]), st.booleans(), st.booleans())
def test_the_shortcut_answers_as_the_union_does(kind: str, rest: list[tuple[str, Any]],
                                                 separators: tuple[str, str], as_text: bool, spaced: bool) -> None:
    # Pairs are written out by hand so that a frame may hold a key twice (a second "type" included).
    body = separators[0].join(json.dumps(k) + separators[1] + json.dumps(v) for k, v in [("type", kind), *rest])
    text = ("{ " if spaced else "{") + body + "}"
    data: bytes | str = text if as_text else text.encode()
    assert answer(data) == union_answer(data)


def test_a_message_frame_takes_the_shortcut_and_still_refuses_what_the_union_refuses() -> None:
    ok = json_codec.decode_request(b'{"type":"message","id":7,"text":"hi","room":"lobby"}')
    assert (ok.type, ok.id, ok.text, ok.room) == ("message", 7, "hi", "lobby")  # type: ignore[attr-defined]
    # A second "type": the union reads the last one, so the frame is a join with stray fields.
    assert answer(b'{"type":"message","text":"x","type":"join"}') == (
        "bad_request", "Invalid frame: room: Field required; text: Extra inputs are not permitted.")
    assert answer(b'{"type":"message","text":""}') == (
        "bad_request", "Invalid frame: text: String should have at least 1 character.")
