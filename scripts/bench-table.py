#!/usr/bin/env python3
"""Print the README benchmark table from criterion's estimates.

Each row is a measurement of this run with its ratio to the baseline of its
group, measured in the same run (never a lone absolute time).
"""
import json
import pathlib
import sys

# group -> (baseline, [(bench, label)])
GROUPS = {
    "echo_job": ("pooling", [
        ("native", "native Rust function, same work (floor)"),
        ("pooling", "citadel: pooling + cached InstancePre"),
        ("on_demand", "citadel: on-demand allocation"),
        ("process_per_job", "one process per job (`citadel run`)"),
    ]),
    "extract_load": ("cached_load", [
        ("cached_load", "load `extract` from the compiled cache"),
        ("compile", "compile `extract` (775 KB)"),
    ]),
}


def median_ns(root, group, bench):
    path = root / group / bench / "new" / "estimates.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["median"]["point_estimate"]


def human(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    print("| measurement | median | vs baseline |")
    print("| --- | ---: | ---: |")
    for group, (baseline, rows) in GROUPS.items():
        base = median_ns(root, group, baseline)
        for bench, label in rows:
            value = median_ns(root, group, bench)
            if value is None or base is None:
                continue
            ratio = value / base
            note = "baseline" if bench == baseline else f"{ratio:.3g}×"
            print(f"| {group}: {label} | {human(value)} | {note} |")


if __name__ == "__main__":
    main()
