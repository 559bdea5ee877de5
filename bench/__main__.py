"""``python -m bench <scenario> [options]``: run the real server and real clients, print one table."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .clients import BenchError
from .harness import Report, cores, machine_summary, raise_file_limit
from .scenarios import Options, connections, fanout, flood, history, latency, login, roundtrip

SCENARIOS: dict[str, Callable[[Options, Report], None]] = {
    "fanout": fanout.run,
    "acked": fanout.run_acked,
    "latency": latency.run,
    "roundtrip": roundtrip.run,
    "connections": connections.run,
    "history": history.run,
    "login": login.run,
    "flood": flood.run,
}
ALL = ["fanout", "acked", "latency", "roundtrip", "connections", "history", "login", "flood"]
TRANSPORTS = ("json", "text", "ws")  # "all"; irc is named on its own (fanout and latency)


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x]


def _transports(text: str) -> list[str]:
    names = list(TRANSPORTS) if text == "all" else [t for t in text.split(",") if t]
    bad = [t for t in names if t not in (*TRANSPORTS, "irc")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown transport {bad[0]!r}: choose from json, text, ws, irc or all")
    return names


def build_parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load generator for UtuVox: starts the real server (and ngircd with --target ngircd) and "
                    "real clients in other processes, and prints a table of figures.",
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"], help="what to measure ('all': every scenario)")
    p.add_argument("--transport", type=_transports, default=d.transports,
                   help="json, text, ws, a comma list, or all (default json)")
    p.add_argument("--target", choices=["utuvox", "ngircd"], default=d.target,
                   help="the server under test; ngircd is spoken to in IRC (fanout, latency and roundtrip only)")
    p.add_argument("--sizes", type=_ints, default=d.sizes,
                   help="fanout: receivers per room (default 10,100,1000); roundtrip: the first (default 10)")
    p.add_argument("--senders", type=int, default=d.senders, help="fanout: senders (default 1); acked: 50")
    p.add_argument("--messages", type=int, default=None, help="fanout: messages per sender (default: enough for "
                                                                  "--deliveries)")
    p.add_argument("--deliveries", type=int, default=d.deliveries, help="fanout: deliveries to aim for per room size")
    p.add_argument("--window", type=int, default=d.window, help="unacknowledged messages a sender may have")
    p.add_argument("--text-size", type=int, default=d.text_size, help="characters of message text (default 32)")
    p.add_argument("--acked-messages", type=int, default=d.acked_messages, help="acked: messages per sender")
    p.add_argument("--shared-room", action="store_true", help="acked: all senders in one room")
    p.add_argument("--rate", type=float, default=d.rate, help="latency, login: messages per second (default 1000)")
    p.add_argument("--room-size", type=int, default=d.room_size, help="latency, login: receivers (default 50)")
    p.add_argument("--duration", type=float, default=d.duration, help="latency, login, roundtrip: seconds measured")
    p.add_argument("--login-concurrency", type=int, default=d.login_concurrency,
                   help="login: logins in flight at once (default 8)")
    p.add_argument("--count", type=int, default=d.count, help="connections: idle connections (default 10000)")
    p.add_argument("--parallel", type=int, default=d.parallel, help="connection setups in progress at once")
    p.add_argument("--stored", type=int, default=d.stored, help="history: messages stored (default 1000000)")
    p.add_argument("--repeat", type=int, default=d.repeat, help="history: timed requests of each kind")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds one measurement may take at most")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="sample the server with py-spy during each measurement; summaries go to DIR")
    p.add_argument("--plot", action="store_true", help="draw PNG figures into docs/ (needs matplotlib)")
    p.add_argument("--nodes", type=int, default=d.nodes,
                   help="UtuVox nodes on one PostgreSQL and one broker (default 1: SQLite); clients are spread over "
                        "them (needs '.[cluster]', PostgreSQL and the broker)")
    p.add_argument("--postgres", action="store_true",
                   help="with one node: PostgreSQL and the broker instead of SQLite (what a cluster costs a node)")
    p.add_argument("--broker", default=d.broker, help="the broker URL with --nodes (default redis://127.0.0.1:6379/0)")
    p.add_argument("--server-log-level", default=d.server_log_level, help="the server's --log-level (default WARNING)")
    p.add_argument("--floods", default=",".join(d.floods), help="flood: which floods, comma-separated "
                                                                 f"(default {','.join(d.floods)})")
    return p


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        transports=args.transport, target=args.target, timeout=args.timeout, profile_dir=args.profile,
        sizes=args.sizes, senders=args.senders, messages=args.messages, deliveries=args.deliveries,
        window=args.window, text_size=args.text_size, acked_messages=args.acked_messages,
        shared_room=args.shared_room, rate=args.rate, room_size=args.room_size, duration=args.duration,
        login_concurrency=args.login_concurrency, count=args.count, parallel=args.parallel, stored=args.stored,
        repeat=args.repeat, server_log_level=args.server_log_level, nodes=args.nodes, broker=args.broker,
        postgres=args.postgres,
        floods=tuple(f for f in args.floods.split(",") if f),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = options_from(args)
    raise_file_limit(max(opts.count, max(opts.sizes, default=0)) * 2 + 1024)
    report = Report()
    names = ALL if args.scenario == "all" else [args.scenario]
    if opts.target == "ngircd":
        names = [n for n in names if n in ("fanout", "latency", "roundtrip")]
    print(f"machine: {machine_summary()}", flush=True)
    if cores() > 1:
        print("server pinned to CPU 0, load generator to CPU 1", flush=True)
    else:
        print("one core only: server and load generator share it", flush=True)
    if opts.target == "utuvox" and any(n != "login" for n in names):
        print("non-login scenarios run the server with UTUVOX_ARGON2_MEMORY_KIB=1024 UTUVOX_ARGON2_TIME_COST=1 "
              "(registering thousands of load clients with the defaults would take minutes); login uses the "
              "defaults", flush=True)
    started = time.monotonic()
    failed = False
    for name in names:
        print(f"running {name} ...", flush=True)
        try:
            SCENARIOS[name](opts, report)
        except BenchError as exc:
            failed = True
            report.note(f"{name}: FAILED: {exc}")
            print(f"{name} failed: {exc}", file=sys.stderr, flush=True)
    print()
    print(report.table())
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    for title, summary in report.series.get("profiles", {}).items():
        print(f"\nprofile of the server, {title}:\n{summary}")
    if args.plot:
        from .plots import draw

        for line in draw(report, Path("docs")):
            print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
