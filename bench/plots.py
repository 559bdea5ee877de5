"""PNG figures of a run (``--plot``): deliveries per second against room size, and the latency
distribution. matplotlib is the optional extra ``plot``; without it the figures are skipped."""

from __future__ import annotations

from pathlib import Path

from .harness import Report


def draw(report: Report, out_dir: Path) -> list[str]:
    """Draw what the report holds; returns a line per figure written (or why none was)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["--plot: matplotlib is not installed (pip install -e '.[plot]'); no figures drawn."]
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    fanout = report.series.get("fanout", {})
    if fanout:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, points in sorted(fanout.items()):
            points = sorted(points)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.axhline(1_000_000, color="grey", linestyle="--", linewidth=1, label="goal: 1,000,000/s")
        ax.set_xscale("log")
        ax.set_xlabel("receivers in the room")
        ax.set_ylabel("deliveries per second")
        ax.set_title("Fan-out: deliveries per second by room size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / "bench_fanout.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(f"wrote {path}")
    latency = {k: v for k, v in report.series.get("latency", {}).items() if v}
    if latency:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, ordered in sorted(latency.items()):
            n = len(ordered)
            step = max(1, n // 2000)  # a few thousand points draw the same curve
            xs = [*ordered[::step], ordered[-1]]
            ys = [100 * i / n for i in range(0, n, step)] + [100.0]
            ax.plot(xs, ys, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("% of deliveries at or below")
        ax.set_title("Latency distribution")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / "bench_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(f"wrote {path}")
    return written or ["--plot: nothing to draw (only fanout, latency and login have figures)"]
