"""The one byte-size formatter and the duration formatter (utuvox/protocol/units.py), and the places that
show sizes to people through them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utuvox.protocol import admin as a
from utuvox.protocol import files as f
from utuvox.protocol import text_codec
from utuvox.protocol.units import byte_size, duration

from .clients import JsonLines
from .conftest import login_json, running_server

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(("n", "shown"), [
    (0, "0 B"), (1, "1 B"), (512, "512 B"), (1023, "1023 B"),
    (KiB, "1.0 KiB"), (1536, "1.5 KiB"), (160_000, "156.2 KiB"), (MiB - 1, "1024.0 KiB"),
    (MiB, "1.0 MiB"), (8_000_000, "7.6 MiB"), (100 * MiB, "100.0 MiB"),
    (GiB, "1.0 GiB"), (10 * GiB, "10.0 GiB"), (1024 * GiB, "1024.0 GiB"),
    (1023.4, "1023 B"), (2.5 * KiB, "2.5 KiB"),
])  # fmt: skip
def test_byte_size(n: float, shown: str) -> None:
    assert byte_size(n) == shown


@given(st.integers(min_value=0, max_value=2**53))
def test_byte_size_is_a_figure_and_a_binary_unit(n: int) -> None:
    figure, unit = byte_size(n).split(" ")
    assert unit in ("B", "KiB", "MiB", "GiB")
    value = float(figure)
    if unit == "B":
        assert value == n
    else:
        scale = 1024 ** ("KiB", "MiB", "GiB").index(unit) * 1024
        assert abs(value - n / scale) <= 0.05 + 1e-9
        assert value >= 1.0 and (value < 1024.05 or unit == "GiB")


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0s"), (4.9, "4s"), (59, "59s"), (60, "1m 0s"), (3600, "1h 0m 0s"), (3661, "1h 1m 1s"),
    (86400, "1d 0h 0m 0s"), (93784.5, "1d 2h 3m 4s"), (10 * 86400 + 5, "10d 0h 0m 5s"),
])  # fmt: skip
def test_duration(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_the_codec_keeps_its_names_for_them() -> None:
    assert text_codec.size is byte_size
    assert text_codec.duration is duration


def test_text_mode_shows_sizes_with_it() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    done = text_codec.render(f.DownloadEnd(download_id="d", name="n", size=3 * MiB // 2), now=now)
    assert done == "[2026-01-02 03:04:05] Download of 'n' complete (1.5 MiB).\n"
    stats = text_codec.render(a.ServerStats(
        started_at=now, uptime=3661, connections=0, connections_total=0, users_online=0, users_registered=0,
        rooms=0, messages=0, messages_per_second=0, bytes_sent=5 * GiB, bytes_per_second=2048,
    ), now=now)
    assert "] Uptime: 1h 1m 1s (since 2026-01-02 03:04:05)\n" in stats
    assert "] Sent: 5.0 GiB (2.0 KiB/s)\n" in stats


async def test_the_server_words_sizes_with_it(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_upload_bytes=3 * MiB // 2) as server:
        alice = await JsonLines.connect(server.tcp_port)
        await login_json(alice, "alice")
        await alice.request("create", room="general")
        refused = await alice.request("upload", room="general", name="big.bin", size=2 * MiB, sha256="0" * 64)
        assert refused["code"] == "file_too_large", refused
        assert refused["message"] == "File too large: 2.0 MiB; the limit is 1.5 MiB."
        await alice.aclose()
