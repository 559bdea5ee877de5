"""The settings tree: every ``UTUVOX_*`` variable and every keyword lands in its field, the documentation
names only real settings with their real defaults, and ``utuvox serve --help`` lists them all."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from utuvox.chat.config import ChatConfig
from utuvox.chat.limits import LimitsConfig, Rate
from utuvox.cli import build_parser
from utuvox.protocol.files import chunk_size_for_frame
from utuvox.server.settings import UNTHROTTLED, VARIABLES, Settings, Variable, setting_name, unthrottled_env

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Variables the documents name that belong to the clients, the bots and the tests, not to the server.
NOT_THE_SERVERS = {"UTUVOX_BOT_USER", "UTUVOX_BOT_PASSWORD", "UTUVOX_URL", "UTUVOX_CA", "UTUVOX_TIME_FORMAT",
                   "UTUVOX_TEST_POSTGRES", "UTUVOX_IRCTEST_PIDS"}

# A valid value other than the default, as an environment variable would give it, for the settings whose
# type alone does not say which.
SPECIAL = {"irc_server_name": "irc.example.org", "database_url": "postgresql://db.example.org/chat",
           "broker_url": "redis://broker.example.org:6379/0", "cluster_name": "blue-team",
           "admin_uids": "[1000, 1001]", "log_level": "DEBUG", "host": "0.0.0.0",
           "allowed_origins": "https://chat.example.org", "node_name": "node-7"}


def other_value(variable: Variable) -> str:
    if variable.name in SPECIAL:
        return SPECIAL[variable.name]
    default = variable.default
    if isinstance(default, bool):
        return "false" if default else "true"
    if isinstance(default, int):
        return str(default + 1)
    if isinstance(default, float):
        return str(default + 1.5)
    return f"/srv/utuvox/{variable.name}"  # the paths


def parsed(variable: Variable, raw: str) -> Any:
    """What the variable's field should hold after ``raw``."""
    if variable.name == "admin_uids":
        return [1000, 1001]
    default = variable.default
    if isinstance(default, bool):
        return raw == "true"
    if isinstance(default, int | float):
        return type(default)(raw)
    if (default is None and raw.startswith("/")) or isinstance(default, Path):
        return Path(raw)
    return raw


@pytest.mark.parametrize("variable", VARIABLES.values(), ids=lambda v: v.env)
def test_every_variable_lands_in_its_field(variable: Variable, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = other_value(variable)
    expected = parsed(variable, raw)
    assert expected != variable.default
    monkeypatch.setenv(variable.env, raw)
    from_env = Settings()
    assert variable.value(from_env) == expected
    monkeypatch.delenv(variable.env)
    assert variable.value(Settings(**{variable.name: expected})) == expected  # type: ignore[arg-type]
    assert variable.value(Settings()) == variable.default


def test_variables_are_read_whatever_their_case_and_keywords_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("utuvox_session_messages_burst", "7")
    monkeypatch.setenv("UTUVOX_RATE_LIMIT_STRIKES", "9")
    settings = Settings(rate_limit_strikes=3)  # type: ignore[call-arg]
    assert settings.chat.limits.session_messages == Rate(5, 7)  # the other part keeps its default
    assert settings.chat.limits.strikes == 3


def test_sections_build_with_defaults_and_compose() -> None:
    assert ChatConfig().limits == LimitsConfig()
    chat = ChatConfig(max_message_chars=10, limits=LimitsConfig(session_messages=Rate(1, 2)))
    settings = Settings(port=0, chat=chat, max_upload_bytes=5)  # type: ignore[call-arg]
    assert settings.port == 0 and settings.chat.max_message_chars == 10
    assert settings.chat.limits.session_messages == Rate(1, 2) and settings.files.max_upload_bytes == 5
    with pytest.raises(ValidationError):
        LimitsConfig(no_such_limit=1)  # type: ignore[call-arg]


def test_the_sections_get_what_the_server_works_out(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_frame_bytes=4096, send_queue_bytes=64 * 1024)
    assert settings.files.uploads_dir == tmp_path / "uploads" and settings.files.temp_dir == tmp_path / "uploads.tmp"
    assert settings.files.chunk_size == chunk_size_for_frame(4096)
    assert settings.chat.history_page_bytes == 32 * 1024  # half a send queue at most
    shared = Settings(data_dir=tmp_path, uploads=tmp_path / "shared")  # type: ignore[call-arg]
    assert shared.files.uploads_dir == tmp_path / "shared"


def test_a_bad_value_is_named_as_operators_know_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UTUVOX_SESSION_MESSAGES_BURST", "0.5")
    with pytest.raises(ValidationError) as bad:
        Settings(rate_limit_strikes=0, file_io_threads=0)  # type: ignore[call-arg]
    names = {setting_name(error["loc"]) for error in bad.value.errors()}
    assert names == {"session_messages_burst", "rate_limit_strikes", "file_io_threads"}


def test_serve_names_a_bad_variable_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "utuvox", "serve", "--data-dir", str(tmp_path), "--port", "0"],
                          env={"UTUVOX_USER_JOINS_PER_SECOND": "0", "PATH": ""}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("utuvox: user_joins_per_second: ")
    assert not any(tmp_path.iterdir())


def test_unthrottled_names_settings_and_reads_the_same_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(UNTHROTTLED) <= set(VARIABLES)
    for name, value in unthrottled_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == Settings(**UNTHROTTLED)  # type: ignore[arg-type]


def test_the_documents_name_only_settings() -> None:
    named = {name for doc in DOCS for name in re.findall(r"UTUVOX_[A-Z0-9_]*[A-Z0-9]", doc.read_text())}
    envs = {v.env for v in VARIABLES.values()}
    assert named - NOT_THE_SERVERS - envs == set()
    assert len(named & envs) > 40  # the documents do name the settings


def test_the_public_profile_of_the_security_page_is_the_defaults() -> None:
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    profile = dict(re.findall(r"(UTUVOX_[A-Z0-9_]+)=([0-9.]+)", text))
    assert len(profile) > 20
    defaults = {v.env: v.default for v in VARIABLES.values()}
    assert {name: float(value) for name, value in profile.items()} == {name: defaults[name] for name in profile}


def test_the_file_limits_listed_by_the_protocol_page_are_settings() -> None:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    listed = text[text.index("The limits are settings"):]
    names = re.findall(r"`([a-z0-9_]+)`", listed[:listed.index(".\n")])
    assert len(names) >= 10 and set(names) <= set(VARIABLES)


def test_every_setting_is_described_and_listed_by_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    listing = capsys.readouterr().out
    for variable in VARIABLES.values():
        assert variable.description, variable.name
        assert f"  {variable.env}=" in listing
