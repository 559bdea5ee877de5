"""Text mode's modules: the command table (plain data the chat core reads for /help), the parser over it,
and one singledispatch renderer per reply and event model, with the original wording."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Literal

import pytest

from utuvox.protocol import Event, Reply, Request, text_codec
from utuvox.protocol import admin as a
from utuvox.protocol import core as p
from utuvox.protocol import files as f
from utuvox.protocol.schema import EVENT_TYPES, REPLY_TYPES, REQUESTS_BY_TYPE
from utuvox.protocol.text_commands import COMMANDS, TEXT_UNSUPPORTED
from utuvox.protocol.text_render import event_line, ok_line, render, render_lines, reply_lines
from utuvox.server.app import Server

from .conftest import login_json

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
THEN = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
# Frames a person never reads: the clients act on them (file transfer, keepalive).
UNSHOWN = {f.UploadReady, f.DownloadStart, f.DownloadChunk, p.Keepalive}


# --- renderers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", REPLY_TYPES, ids=lambda m: m.__name__)
def test_every_reply_model_has_its_renderer(model: type[Reply]) -> None:
    own = reply_lines.dispatch(model) is not reply_lines.dispatch(object)
    assert own != (model in UNSHOWN)


@pytest.mark.parametrize("model", EVENT_TYPES, ids=lambda m: m.__name__)
def test_every_event_model_has_its_renderer(model: type[Event]) -> None:
    own = event_line.dispatch(model) is not event_line.dispatch(object)
    assert own != (model in UNSHOWN)


def test_a_frame_without_a_renderer_reads_as_its_type_and_fields() -> None:
    ready = f.UploadReady(re=1, upload_id="u-1", chunk_size=3072)
    assert render(ready, now=NOW) == "[2026-01-02 03:04:05] upload_ready: upload_id=u-1, chunk_size=3072\n"
    assert render(p.Keepalive(ts=THEN)) == "[2025-05-06 07:08:09] keepalive\n"


@pytest.mark.parametrize(("request_", "room", "line"), [
    (None, None, "OK."),
    (p.Join(room="general"), None, "OK."),
    (p.Message(text="hi"), "general", None),
    (p.ChangePassword(old_password="a", new_password="b"), None, "Password changed successfully."),
    (p.Msg(to="alice", text="hi"), None, "Private message sent to alice."),
    (p.Topic(room="general", text="t"), None, "Topic of 'general' set."),
    (a.DeleteRoom(room="general"), "general", "Room 'general' deleted."),
    (a.AddUser(username="u", password="p", is_admin=True), None, "User 'u' added as admin."),
    (a.EditUser(username="u", new_password="p"), None, "User 'u' updated."),
    (a.BanUser(username="u"), None, "User 'u' has been banned."),
    (a.UnbanUser(username="u"), None, "User 'u' has been unbanned."),
    (a.ChangeAdminKey(new_key="k" * 16), None, "Admin key changed successfully."),
    (a.Announce(text="x"), None, "Announcement sent."),
    (a.Announce(text="x", room="general"), "general", "Announcement sent to room 'general'."),
    (a.Tail(), None, "Tailing every room. /untail to stop."),
    (a.Tail(room="general"), "general", "Tailing room 'general'. /untail to stop."),
    (a.Untail(), None, "Stopped tailing."),
])  # fmt: skip
def test_ok_reads_as_the_request_it_answers(request_: Request | None, room: str | None, line: str | None) -> None:
    reply = p.Ok(re=1, room=room)
    assert ok_line(request_, reply) == line
    assert render(reply, request=request_, now=NOW) == ("" if line is None else f"[2026-01-02 03:04:05] {line}\n")


def test_lines_of_a_log_keep_their_own_time() -> None:
    page = a.AdminLogPage(entries=[a.AdminLogEntry(id=1, ts=THEN, actor="root", via="admin", action="ban_user",
                                                   target="bob", outcome="ok", detail="spam\x1b")])
    entry = "root via admin: ban_user 'bob' -> ok (spam\ufffd)"
    assert render_lines(page, now=NOW) == [(NOW, "Admin log:"), (THEN, entry)]
    assert render(page, now=NOW) == ("[2026-01-02 03:04:05] Admin log:\n"
                                     "[2025-05-06 07:08:09] root via admin: ban_user 'bob' -> ok (spam\ufffd)\n")


def test_history_lines_name_other_rooms_and_keep_their_time() -> None:
    joined = p.Joined(room="general", created=True, topic="welcome", history=[
        p.MessageEvent(room="general", seq=1, user="bob", text="hi", ts=THEN),
        p.MessageEvent(room="general", seq=2, user="bob", text="waves", action=True, ts=THEN),
    ])
    assert render(joined, now=NOW).splitlines() == [
        "[2026-01-02 03:04:05] Room 'general' created successfully.",
        "[2026-01-02 03:04:05] Topic of 'general': welcome",
        "[2026-01-02 03:04:05] Chat history for 'general':",
        "[2025-05-06 07:08:09] bob: hi",
        "[2025-05-06 07:08:09] * bob waves",
        "[2026-01-02 03:04:05] You joined room 'general'.",
    ]
    elsewhere = p.MessageEvent(room="random", seq=1, user="bob", text="hi", ts=THEN)
    assert render(elsewhere, current_room="general") == "[2025-05-06 07:08:09] [random] bob: hi\n"


def test_operator_and_file_listings_keep_their_wording() -> None:
    users = a.UserTable(users=[a.AccountInfo(name="bob", is_admin=True, banned=True, ban_reason="spam", sessions=1),
                               a.AccountInfo(name="carol", is_bot=True)], next="carol")
    assert [line for _, line in render_lines(users, now=NOW)] == [
        "Users:",
        "Username: bob, Admin: Yes, Banned: Yes (spam), Bot: No, Online: Yes",
        "Username: carol, Admin: No, Banned: No, Bot: Yes, Online: No",
        "More: /view_users carol",
    ]
    who = a.SessionList(sessions=[a.SessionInfo(id=3, user="bob", transport="tcp", address="127.0.0.1:5000",
                                                rooms=["general"], connected_at=THEN)])
    assert render_lines(who, now=NOW)[1][1] == "#3 bob (tcp 127.0.0.1:5000) in general since 2025-05-06 07:08:09"
    listing = f.FileList(room="general", more=True, files=[
        f.FileInfo(name="general_1", original="a.txt", room="general", size=1536, sha256="0" * 64, uploader="bob",
                   uploaded_at=THEN)])
    assert [line for _, line in render_lines(listing, now=NOW)] == [
        "Files in room 'general' (the newest 1):",
        "  general_1     1.5 KiB  bob          2025-05-06 07:08:09  (Original: a.txt)",
    ]
    assert render(a.Kicked(user="bob", count=2), now=NOW) == "[2026-01-02 03:04:05] User 'bob' kicked (2 sessions).\n"


class Shout(Reply):
    type: Literal["shout"] = "shout"
    text: str


class Thunder(Event):
    type: Literal["thunder"] = "thunder"
    loud: bool = True


def test_a_module_adds_the_renderer_of_its_model_by_registering_it() -> None:
    assert render(Shout(text="hi"), now=NOW) == "[2026-01-02 03:04:05] shout: text=hi\n"
    assert render(Thunder(ts=THEN)) == "[2025-05-06 07:08:09] thunder: loud=True\n"

    @reply_lines.register
    def _shout(reply: Shout, request: Request | None) -> list[text_codec.Line]:
        return [reply.text.upper() + "!"]

    @event_line.register
    def _thunder(event: Thunder, current_room: str | None) -> str:
        return "Thunder."

    assert render(Shout(text="hi"), now=NOW) == "[2026-01-02 03:04:05] HI!\n"
    assert render(Thunder(ts=THEN)) == "[2025-05-06 07:08:09] Thunder.\n"


# --- the command table and the parser -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_builds_a_request_type(name: str) -> None:
    command = COMMANDS[name]
    assert command.type in REQUESTS_BY_TYPE
    assert command.usage.split(" ")[0] == f"/{name}"
    assert command.description.endswith((".", ")"))
    assert command.admin == REQUESTS_BY_TYPE[command.type].admin_only


def test_commands_text_mode_cannot_carry_out_are_still_listed() -> None:
    assert set(TEXT_UNSUPPORTED) == {"upload", "download"}
    assert {COMMANDS[n].type for n in ("upload", "download")} == set(TEXT_UNSUPPORTED)


def test_the_codec_keeps_its_public_names() -> None:
    from utuvox.protocol import text_parse, text_render

    assert text_codec.COMMANDS is COMMANDS
    assert text_codec.parse_line is text_parse.parse_line
    assert text_codec.render is text_render.render and text_codec.render_lines is text_render.render_lines
    assert text_codec.parse_line("/me waves") == p.Message(text="waves", action=True)


def _run(code: str) -> str:
    """What a fresh interpreter prints: imports are checked where nothing was imported before."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_the_command_table_imports_neither_parser_nor_renderer() -> None:
    code = ("import sys, utuvox.protocol.text_commands; "
            "print(' '.join(m for m in sys.modules if m.startswith('utuvox')))")
    loaded = set(_run(code).split())
    assert loaded == {"utuvox", "utuvox.protocol", "utuvox.protocol.base", "utuvox.protocol.errors",
                      "utuvox.protocol.text_commands"}


def test_the_chat_layer_does_not_import_the_text_codec() -> None:
    code = ("import sys, pkgutil, importlib, utuvox.chat as chat\n"
            "for m in pkgutil.iter_modules(chat.__path__): importlib.import_module('utuvox.chat.' + m.name)\n"
            "print(' '.join(m for m in sys.modules if m.startswith('utuvox.protocol.text')))")
    loaded = set(_run(code).split())
    assert "utuvox.protocol.text_commands" in loaded  # /help
    assert not loaded & {"utuvox.protocol.text_codec", "utuvox.protocol.text_parse"}


async def test_help_is_the_command_table(server: Server, connect_json) -> None:
    js = await connect_json()
    await login_json(js, "bob")
    help_ = await js.request("help")
    assert help_["commands"] == [f"{c.usage} - {c.description}" for c in COMMANDS.values() if not c.admin]
    assert help_.get("admin_commands", []) == []
