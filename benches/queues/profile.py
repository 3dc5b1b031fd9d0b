#!/usr/bin/env python3
"""A flame graph of `citadel work` draining no-op jobs, as the queue bench
runs it (16 slots, the `echo` guest, one local Redis): `perf record` with
DWARF call stacks on the worker while it drains --jobs entries, then
`inferno` folds the stacks into an SVG.

Needs `perf` (Debian's linux-perf) and inferno (`cargo install inferno`).

    benches/queues/profile.py --citadel target/release/citadel --guests target/guests \\
        --svg target/flame/queue.svg
"""

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import RedisServer, acknowledged, citadel_worker, enqueue_noops, stop  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--jobs", type=int, default=40000)
    parser.add_argument("--citadel-concurrency", type=int, default=16)
    parser.add_argument("--svg", required=True, help="where the flame graph goes")
    parser.add_argument("--title", default="citadel work draining no-op jobs")
    args = parser.parse_args()
    for tool in ("perf", "inferno-collapse-perf", "inferno-flamegraph"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install linux-perf; cargo install inferno")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        server = RedisServer(workdir)
        r = server.client
        worker = citadel_worker(args, server, workdir, "bench")
        done = lambda: acknowledged(r)
        try:
            # Warm up (component load, connections), then record the drain.
            enqueue_noops(r, 2000)
            deadline = time.time() + 120
            while done() < 2000 and time.time() < deadline:
                time.sleep(0.05)
            base = done()
            enqueue_noops(r, args.jobs, prefix="profiled")
            data = workdir / "perf.data"
            perf = subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,32768", "-o", str(data),
                                     "-p", str(worker.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.time()
            while done() < base + args.jobs and time.time() - started < 300:
                time.sleep(0.05)
            print(f"drained {done() - base} jobs in {time.time() - started:.2f} s (under perf)", file=sys.stderr)
            perf.send_signal(2)
            perf.wait()
        finally:
            stop([worker])
            server.stop()
        script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, check=True).stdout
        folded = subprocess.run(["inferno-collapse-perf"], input=script, capture_output=True, check=True).stdout
        svg = subprocess.run(["inferno-flamegraph", "--title", args.title], input=folded, capture_output=True,
                             check=True).stdout
        pathlib.Path(args.svg).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.svg).write_bytes(svg)
        print(f"flame graph: {args.svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
