"""The load generator at tiny sizes: it starts the real server, runs fan-out over each transport, and
every expected delivery arrives. Counts only; no time is asserted."""

from __future__ import annotations

import pytest

from bench.harness import Report
from bench.scenarios import Options
from bench.scenarios.fanout import run


@pytest.mark.parametrize("transport", ["json", "text", "ws"])
def test_fanout_delivers_everything(transport: str) -> None:
    opts = Options(transports=[transport], sizes=[3], senders=2, messages=20, window=8, timeout=30,
                   setup_timeout=30)
    report = Report()
    run(opts, report)
    delivered = {f.name: f for f in report.figures}
    assert "deliveries/s" in delivered, report.table()
    share = delivered["delivered"]
    # 3 receivers x 2 senders x 20 messages, every one of them.
    assert share.note == "120 of 120", report.table()
    assert share.met, report.table()
