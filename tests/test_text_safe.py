"""The one sanitiser (utuvox/protocol/safe_text.py): which characters may reach a terminal, checked code point
by code point, and end to end through a text-mode session."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from console import views
from utuvox.client.files import safe_file_name
from utuvox.client.probe import _diagnose
from utuvox.client.transport import parse_url
from utuvox.protocol import admin as a
from utuvox.protocol import core as p
from utuvox.protocol import text_codec
from utuvox.protocol.safe_text import UNSAFE, clean, is_safe
from utuvox.server.app import Server

from .conftest import login_json, open_ws
from .test_console import console

BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def test_every_code_point_is_judged_by_the_one_table() -> None:
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    cleaned = clean(every)
    assert len(cleaned) == len(every)
    replaced = {i for i, (before, after) in enumerate(zip(every, cleaned, strict=True)) if before != after}
    assert replaced == UNSAFE
    assert all(cleaned[i] == "\ufffd" for i in replaced)


@pytest.mark.parametrize(("what", "chars"), [
    ("C0 controls", "".join(map(chr, range(0x20)))),
    ("DEL and C1 controls", "".join(map(chr, range(0x7F, 0xA0)))),
    ("bidirectional controls", BIDI_CONTROLS),
    ("line and paragraph separators", "\u2028\u2029"),
    ("byte order mark", "\ufeff"),
    ("deprecated format characters", "\u206a\u206b\u206c\u206d\u206e\u206f"),
    ("interlinear annotations", "\ufff9\ufffa\ufffb"),
    ("lone surrogates", "\ud800\udbff\udc00\udfff"),
])  # fmt: skip
def test_unsafe_characters_are_replaced(what: str, chars: str) -> None:
    assert clean(f"a{chars}b") == "a" + "\ufffd" * len(chars) + "b", what
    assert not is_safe(chars)


def test_bidi_controls_are_exactly_unicodes() -> None:
    explicit = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
    bidi_control = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.bidirectional(chr(c)) in explicit}
    assert bidi_control | {"\u200e", "\u200f", "\u061c"} == set(BIDI_CONTROLS)
    assert all(ord(c) in UNSAFE for c in BIDI_CONTROLS)


@pytest.mark.parametrize("text", [
    "plain ASCII, with punctuation: ~!@#$%^&*()_+{}|:<>?",
    "accents: café, naïve, Ångström; ß; Ελληνικά; русский",
    "日本語のテキスト、中文、한국어",
    # Arabic, Persian (whose spelling needs the zero-width non-joiner) and Hebrew
    "\u0639\u0631\u0628\u06cc \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \u05e2\u05d1\u05e8\u05d9\u05ea",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 and a flag \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063"
    "\U000e0074\U000e007f",  # joiners and tag characters build emoji
    "soft\u00adhyphen, zero\u200bwidth space, word\u2060joiner",
    "\ue000 private use, \U0001fae8 a recent emoji",
])  # fmt: skip
def test_what_people_write_is_kept(text: str) -> None:
    assert clean(text) == text
    assert is_safe(text)


@given(st.text())
def test_clean_is_idempotent_and_length_preserving(text: str) -> None:
    once = clean(text)
    assert len(once) == len(text)
    assert clean(once) == once and is_safe(once)
    assert all(c == "\ufffd" or c == d for c, d in zip(once, text, strict=True))


def test_saved_file_names_are_at_least_as_strict() -> None:
    """A downloaded file's name has rules of its own (path separators, dot files), but no character a
    terminal may not show survives them either."""
    for cp in UNSAFE:
        assert chr(cp) not in safe_file_name(f"a{chr(cp)}b.txt"), hex(cp)


def test_text_mode_and_the_console_show_text_through_it() -> None:
    evil = "x\u061c\u202ey\x1b[2J\ufff9z"
    line = text_codec.render(p.MessageEvent(room="r", seq=1, user="bob", text=evil), current_room="r")
    assert line.endswith(f"bob: {clean(evil)}\n")
    table = views.users(a.UserTable(users=[a.AccountInfo(name="bob", banned=True, ban_reason=evil)]))
    out = Console(width=200, color_system=None, force_terminal=False, record=True)
    out.print(table)
    shown = out.export_text()
    assert clean(evil) in shown and "\x1b" not in shown and "\u061c" not in shown


async def test_text_mode_sessions_see_no_bidi_or_hidden_characters(server: Server, connect_text) -> None:
    """A WebSocket client writes a topic and a message that would read differently on screen than they are."""
    hidden = "pay \u061c\u2067bob\u2069 \ufff9100\ufffa1\ufffb now\u206a"
    async with open_ws(server.ws_port) as writer:
        await login_json(writer, "writer")
        assert (await writer.request("create", room="lobby"))["type"] == "joined"
        assert (await writer.request("topic", room="lobby", text=hidden))["type"] == "ok"
        reader = await connect_text()
        await reader.recv_line()
        for line in ("/register reader pw", "/join lobby"):
            await reader.send(line)
        shown = [await reader.expect(f"Topic of 'lobby': {clean(hidden)}")]
        await reader.expect("You joined room 'lobby'")
        assert (await writer.request("message", text=hidden))["type"] == "ok"
        await reader.send("/ping")
        while not (line := await reader.recv_line()).endswith("] Pong."):
            shown.append(line)
        assert any(line.endswith(f"] writer: {clean(hidden)}") for line in shown), shown
        assert all(is_safe(line) for line in shown)
        assert not set("\u061c\u2067\u2069\ufff9\ufffa\ufffb\u206a") & set("".join(shown))
        # JSON clients get the text exactly as sent.
        history = await writer.request("history", room="lobby")
        assert [e["text"] for e in history["events"] if e["type"] == "message"] == [hidden]


async def test_the_console_cleans_what_its_failures_quote(server: Server) -> None:
    result = await console(server, "kick '#x\x1b[2Jy'")
    assert result.returncode == 1
    said = result.stderr.decode()
    assert "Not a session id: #x\ufffd[2Jy" in said and "\x1b" not in said


def test_the_client_cleans_what_another_server_answered() -> None:
    said = _diagnose(parse_url("tcp://127.0.0.1:9091"), b"HTTP/1.1 400 \x1b]0;owned\x07Bad\r\n\r\n")
    assert said is not None and "'HTTP/1.1 400 \ufffd]0;owned\ufffdBad'" in said
