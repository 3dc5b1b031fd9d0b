#!/usr/bin/env python3
"""The soak's figures from one run of the chaos test in soak mode
(`tests/chaos.rs` with CITADEL_CHAOS_REPORT set): the chaos report, and the
growth of the workers' RSS and open files and of Redis's memory after
warm-up, plotted into a PNG for the README.

    soak_report.py <report dir> --png docs/soak.png --out target/bench/soak.json

Growth compares the median of the two minutes after warm-up (the first
third of the run: by then the queue's MAXLEN, the streams' caps and the
records' TTLs hold Redis to a window) with the median of the last two
minutes; the target is at most 5 %.
"""
import argparse
import csv
import json
import pathlib
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [
    ("rss_kib", "workers' RSS (3 processes)", "MiB", 1 / 1024),
    ("open_files", "workers' open files", "files", 1),
    ("redis_bytes", "Redis used_memory", "MiB", 1 / (1024 * 1024)),
]
WINDOW_S = 120


def median_in(rows, key, start, end):
    values = [row[key] for row in rows if start <= row["at_s"] < end]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("report_dir", type=pathlib.Path)
    parser.add_argument("--png", type=pathlib.Path, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    chaos = json.loads((args.report_dir / "chaos.json").read_text())
    with open(args.report_dir / "soak.csv") as file:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
    duration = rows[-1]["at_s"]
    warmup = duration / 3
    growth = {}
    for key, _, _, _ in METRICS:
        after_warmup = median_in(rows, key, warmup, warmup + WINDOW_S)
        last = median_in(rows, key, duration - WINDOW_S, duration + 1)
        growth[key] = {
            "after_warmup": after_warmup,
            "last": last,
            "growth_pct": 100 * (last - after_warmup) / after_warmup if after_warmup else None,
        }

    figure, axes = plt.subplots(len(METRICS), 1, figsize=(8, 7), sharex=True)
    minutes = [row["at_s"] / 60 for row in rows]
    for axis, (key, title, unit, scale) in zip(axes, METRICS):
        axis.plot(minutes, [row[key] * scale for row in rows], color="#1f6feb", linewidth=1.2)
        axis.axvline(warmup / 60, color="#888888", linestyle="--", linewidth=1)
        pct = growth[key]["growth_pct"]
        axis.set_title(f"{title}: {pct:+.1f} % after warm-up", fontsize=10, loc="left")
        axis.set_ylabel(unit)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("minutes (dashed: end of warm-up)")
    faults = chaos["faults"]
    figure.suptitle(
        f"citadel soak: {chaos['submitted']} jobs, {faults['kill9']} kill -9, "
        f"{faults['sigterm']} SIGTERM, {faults['redis_restart']} Redis restarts, {chaos['lost']} lost",
        fontsize=11,
    )
    figure.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.png, dpi=100)
    args.out.write_text(json.dumps({"chaos": chaos, "growth": growth, "samples": len(rows),
                                    "duration_s": duration, "warmup_s": warmup}, indent=2))


if __name__ == "__main__":
    main()
