"""Draws the plots of docs/performance.md from the benchmarks' CSV (see scripts/plots.sh).

    python plots.py <order_expiration.csv> <tick_latency.csv> <out dir>

- throughput.png: order-expiration orders/s against the batch size (log-log), the pipeline
  (one instance, exactly once) and the floor (one UPDATE + produce, no transactions; the
  same for every batch size, so a horizontal line);
- tick-latency-cdf.png: the CDF of tick -> committed run result for the noop job, next to
  the one-EOS-hop floor's and the same run through the work-items topic, each p99 marked.
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)


def throughput(path, out):
    rows = list(csv.DictReader(open(path, newline="")))
    pipeline = sorted(
        (int(r["batch"]), float(r["orders_per_s"]))
        for r in rows
        if r["variant"].startswith("batch") and r["instances"] == "1"
    )
    floor = [float(r["orders_per_s"]) for r in rows if r["variant"] == "floor"]
    if not pipeline:
        sys.exit(f"{path}: no pipeline rows (variants batch10, batch100, ...)")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    xs, ys = zip(*pipeline)
    ax.plot(xs, ys, marker="o", label="pipeline, exactly once (1 instance)")
    for x, y in pipeline:
        ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    if floor:
        ax.axhline(floor[0], color="grey", linestyle="--", label=f"floor: 1 UPDATE + produce ({floor[0]:,.0f}/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:,}" for x in xs])
    ax.set_xlabel("orders per chunk (jobs.order_expiration.batch_size)")
    ax.set_ylabel("orders cancelled per second")
    n = rows[0]["orders"]
    ax.set_title(f"order-expiration, {int(n):,} orders, local stack (2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(f"{out}/throughput.png")


def latency(path, out):
    series = {}
    for r in csv.DictReader(open(path, newline="")):
        series.setdefault(r["series"], []).append(float(r["ms"]))
    labels = {
        "floor": "floor: one EOS hop",
        "pipeline": "noop run: tick -> run result committed",
        "work-items": "same, through work items (inline off)",
    }
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in ("floor", "pipeline", "work-items"):
        v = sorted(series.get(name, []))
        if not v:
            if name == "work-items":
                continue  # CSV from before the series existed
            sys.exit(f"{path}: no samples of {name}")
        p99 = v[round((len(v) - 1) * 0.99)]
        line, = ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=f"{labels[name]} (p99 {p99:.1f} ms)")
        ax.axvline(p99, color=line.get_color(), linestyle=":", alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("fraction of ticks")
    ax.set_title("tick -> committed output, local stack (2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(f"{out}/tick-latency-cdf.png")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    throughput(sys.argv[1], sys.argv[3])
    latency(sys.argv[2], sys.argv[3])
