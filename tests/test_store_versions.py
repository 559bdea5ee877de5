"""Stored bodies are read through their schema version: an old body is upgraded step by step to
today's form before today's models validate it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from utuvox.protocol import core as p
from utuvox.protocol import stored
from utuvox.protocol.stored import CURRENT_VERSION, UnknownVersion, load_event, load_private, upgrade

V1_MESSAGE = ('{"type":"message","ts":"2026-01-01T12:00:01Z","room":"General","seq":2,"user":"Alice",'
              '"text":"hello"}')


def _rename_text_to_body(data: dict[str, Any]) -> dict[str, Any]:
    """A made-up version 2 in which a message's ``text`` is called ``body``."""
    if data.get("type") == "message":
        data = {("body" if key == "text" else key): value for key, value in data.items()}
    return data


def _body_back_to_text(data: dict[str, Any]) -> dict[str, Any]:
    """And a made-up version 3 that undoes it, so today's models can check the result."""
    if data.get("type") == "message":
        data = {("text" if key == "body" else key): value for key, value in data.items()}
    return data


def test_a_step_renames_a_field_of_an_older_body() -> None:
    v1 = json.loads(V1_MESSAGE)
    v2 = upgrade(1, v1, steps={1: _rename_text_to_body}, to=2)
    assert v2["body"] == "hello" and "text" not in v2
    assert upgrade(2, v2, steps={1: _rename_text_to_body}, to=2) == v2  # already there: unchanged
    join = {"type": "join", "room": "General"}
    assert upgrade(1, join, steps={1: _rename_text_to_body}, to=2) == join  # a step touches what it means to


def test_steps_chain_from_any_older_version() -> None:
    steps = {1: _rename_text_to_body, 2: _body_back_to_text}
    assert upgrade(1, json.loads(V1_MESSAGE), steps=steps, to=3) == json.loads(V1_MESSAGE)
    assert upgrade(2, {"type": "message", "body": "hi"}, steps=steps, to=3) == {"type": "message", "text": "hi"}


def test_a_version_that_cannot_be_read_is_a_clear_error() -> None:
    with pytest.raises(UnknownVersion, match="version 9"):
        upgrade(9, {}, steps={}, to=2)
    with pytest.raises(UnknownVersion, match="no upgrade from stored version 1 to 2"):
        upgrade(1, {}, steps={}, to=2)
    with pytest.raises(UnknownVersion):
        load_event(CURRENT_VERSION + 1, V1_MESSAGE)


def test_today_s_version_is_read_as_it_is() -> None:
    assert upgrade(CURRENT_VERSION, {"a": 1}) == {"a": 1}
    event = load_event(CURRENT_VERSION, V1_MESSAGE)
    assert isinstance(event, p.MessageEvent) and (event.seq, event.text) == (2, "hello")


def test_readers_upgrade_an_older_body_before_validating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a version 2 whose messages say ``body``, and a reader of version 3 whose step takes it back
    to ``text``, a body stored at version 2 reads as today's model."""
    monkeypatch.setattr(stored, "CURRENT_VERSION", 3)
    monkeypatch.setattr(stored, "STEPS", {1: _rename_text_to_body, 2: _body_back_to_text})
    v2 = '{"type":"message","ts":"2026-01-01T12:00:01Z","room":"General","seq":2,"user":"Alice","body":"hi"}'
    event = load_event(2, v2)
    assert isinstance(event, p.MessageEvent) and event.text == "hi"
    assert load_event(1, V1_MESSAGE).text == "hello"
    private = '{"type":"msg","ts":"2026-01-01T12:00:10Z","user":"Alice","to":"bob","text":"psst"}'
    assert load_private(1, private).text == "psst"
