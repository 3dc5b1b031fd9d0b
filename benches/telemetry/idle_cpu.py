#!/usr/bin/env python3
"""What telemetry costs a running node: the CPU time of an idle
`citadel work` node publishing its status every second, against the same
node publishing every hour (the baseline, same run, same Redis). The
difference over the window is the collector's and publishers' share of a
core at a 1 s status interval.

Prints a JSON summary to stdout (and to --out); scripts/bench-table.py
turns it into the README table. Uses only the standard library.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time

TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def node_cpu(citadel, guests, redis_url, interval_s, window_s, workdir):
    config = pathlib.Path(workdir) / f"node-{interval_s}.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\n'
        f"[node]\nid = \"bench-{interval_s}\"\n"
        f"[handlers]\necho = \"{guests}/echo.wasm\"\n"
        f"[telemetry]\nstatus_interval_s = {interval_s}\nstatus_addr = \"127.0.0.1:0\"\n"
        f"[sandbox]\ncache_dir = \"{workdir}/cache\"\n")
    log = open(pathlib.Path(workdir) / f"node-{interval_s}.log", "w")
    node = subprocess.Popen([citadel, "--config", str(config), "work"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 60
        while "worker ready" not in (pathlib.Path(workdir) / f"node-{interval_s}.log").read_text():
            if time.time() > deadline or node.poll() is not None:
                raise SystemExit(f"the node did not start; see {log.name}")
            time.sleep(0.1)
        time.sleep(3)  # past start-up (component load, first snapshot)
        before, started = cpu_seconds(node.pid), time.time()
        time.sleep(window_s)
        return (cpu_seconds(node.pid) - before) / (time.time() - started)
    finally:
        node.terminate()
        node.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", workdir],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            baseline = node_cpu(args.citadel, args.guests, url, 3600, args.window, workdir)
            every_second = node_cpu(args.citadel, args.guests, url, 1, args.window, workdir)
        finally:
            redis.terminate()
            redis.wait()
    summary = {
        "window_s": args.window,
        "idle_node_status_hourly_core_share": baseline,
        "idle_node_status_every_second_core_share": every_second,
        "telemetry_at_1s_core_share": every_second - baseline,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
