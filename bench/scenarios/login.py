"""Logins: clients that connect, log in and disconnect, over and over, against the default argon2
parameters (19 MiB, 2 iterations: slow on purpose); logins per second, and the latency of a steady
message stream into a room measured at the same time, which shows whether the event loop stays
responsive while hashes run on worker threads."""

from __future__ import annotations

from array import array

from ..harness import Figure, Report, Worker, percentile, temp_dir
from . import Options, cpu_note, measure, open_target, point, worker_config
from .latency import latency_figures, summarize, worker


def run(opts: Options, report: Report) -> None:
    setting = (f"{opts.login_concurrency} logging in at once; {opts.rate:g} msgs/s into {opts.room_size} "
               f"receivers")
    for target, transport in opts.targets:
        if target != "utuvox":
            continue
        with point(report, "login", f"{target}/{transport}", setting, "logins/s"):
            _point(opts, report, transport, setting)


def _point(opts: Options, report: Report, transport: str, setting: str) -> None:
    label = f"utuvox/{transport}"
    with temp_dir("utuvox-bench-") as work, open_target("utuvox", work, opts, fast_hash=False) as server:
        cfg = worker_config(server, transport, opts, room="lat", receivers=opts.room_size, rate=opts.rate,
                            duration=opts.duration, warmup=opts.warmup, text_size=opts.text_size,
                            login_concurrency=opts.login_concurrency, login_users=opts.login_users,
                            files=opts.room_size + opts.login_concurrency + 64)
        with Worker(worker, cfg) as w:
            ready, done, summary = measure(server, w, opts, f"login-{transport}")
    times = sorted(_floats(done["login_times"]))
    rate = done["logins"] / done["login_seconds"] if done["login_seconds"] > 0 else 0.0
    note = f"argon2 defaults; {done['logins']:,} logins in {done['login_seconds']:.1f} s; {cpu_note(done)}"
    if done["login_failures"]:
        note += f"; {done['login_failures']} failed ({done['login_error']})"
    report.add(
        Figure("login", label, setting, "logins/s", rate, "", "", None, note),
        Figure("login", label, setting, "login time p50", percentile(times, 0.5) * 1000, "ms"),
        Figure("login", label, setting, "login time p99", percentile(times, 0.99) * 1000, "ms"),
    )
    report.add(*latency_figures("login", label, setting, done, 20.0))
    ordered, *_ = summarize(done)
    report.series.setdefault("latency", {})[f"{label} during logins"] = ordered
    if summary:
        report.series.setdefault("profiles", {})[f"login {label} {setting}"] = summary
    report.note(f"login: setting up {opts.room_size + 1} registered receivers with the default argon2 took "
                f"{ready['setup_s']:.1f} s")


def _floats(raw: bytes) -> array[float]:
    values = array("d")
    values.frombytes(raw)
    return values
