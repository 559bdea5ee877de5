"""Sampling the server while a load runs, with py-spy (``pip install py-spy``), and summing the samples
into the functions where the time goes: by *self* time (the function on top of the stack) and by
*total* time (the function anywhere on the stack)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from .harness import CLIENT_CPU, cores

HINT = "py-spy is not installed (pip install py-spy); profiling skipped."
# Frames on every stack of the server (start-up, the trio run loop, thread bootstrap) say nothing.
_WRAPPERS = ("<frozen runpy>", "utuvox/__main__.py", "utuvox/cli.py", "threading.py")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


class Profiler:
    """``py-spy record`` attached to ``pid`` until :meth:`stop`; writes collapsed stacks to ``out``."""

    def __init__(self, pid: int, out: Path, *, rate: int = 200) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        binary = shutil.which("py-spy")
        if binary is None:
            return
        # Blocking mode (py-spy pauses the process for each sample, some tens of microseconds): without it
        # stacks come out truncated and the totals are wrong.
        cmd = [binary, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "-o", str(out)]
        if cores() > 1:
            cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd] if shutil.which("taskset") else cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def available(self) -> bool:
        return self.proc is not None

    def stop(self) -> str:
        """Stop sampling; returns the summary (or why there is none)."""
        if self.proc is None:
            return HINT
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        if not self.out.exists():
            return f"py-spy wrote nothing: {err.strip()[-300:]}"
        return summarize(self.out.read_text())


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for anchor in ("site-packages/", "lib/python3"):
        if anchor in path:
            path = path.split(anchor, 1)[1]
            break
    else:
        parts = Path(path).parts
        path = "/".join(parts[-3:])
    return f"{m.group('func')} ({path})"


# A worker thread with nothing to do waits inside these frames; py-spy does not see that as idle.
_IDLE_LEAVES = ("WorkerThread._work (trio/_core/_thread_cache.py)",
                # the password-hashing threads wait for work in queue.get, a C call py-spy counts as their own time,
                "LowPriorityThreads._work (utuvox/chat/low_priority.py)",
                # and so does the store's writer thread between commits
                "WriterThread._work (utuvox/store/writer_thread.py)")


def summarize(raw: str, top: int = 20) -> str:
    """Collapsed stacks (``a;b;c N`` per line) to two rankings, self time and total time, in % of the
    busy samples (idle worker threads left out), and the share of the event loop's thread."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = loop_samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        on_loop = "trio/_core/_run.py" in stack and "_thread_cache.py" not in stack
        frames = [_short(f) for f in stack.split(";") if f and not any(w in f for w in _WRAPPERS)]
        if not frames or frames[-1] in _IDLE_LEAVES:
            continue
        samples += n
        loop_samples += n if on_loop else 0
        own[frames[-1]] += n
        for f in set(frames):
            if not f.startswith(("run (trio/_core/_run.py)", "unrolled_run (")):
                total[f] += n
    if not samples:
        return "no samples"
    lines = [f"{samples} busy samples: {100 * loop_samples / samples:.0f} % on the event loop's thread, "
             f"{100 * (samples - loop_samples) / samples:.0f} % on worker threads (SQLite, argon2)", "", "self time:"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "total time (the function or what it calls):"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines)
