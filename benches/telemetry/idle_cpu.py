#!/usr/bin/env python3
"""What telemetry costs a running node: the CPU time of an idle
`citadel work` node publishing its status every second, against the same
node publishing every hour (the baseline, same run, same Redis). The
difference is the collector's and publishers' share of a core at a 1 s
status interval.

CPU time is read in nanoseconds from a cgroup of the node's own (v1
`cpuacct.usage`, v2 `cpu.stat` `usage_usec`; every thread, exited ones
included), not in clock ticks: the difference is a few ms per minute.
Baseline and 1 s runs alternate `--pairs` times; the summary gives each
pair's difference, their mean and a 95 % confidence interval.

Prints a JSON summary to stdout (and to --out); scripts/bench-table.py
turns it into the README table. Uses only the standard library.
"""

import argparse
import json
import os
import statistics
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


# Student's t at 97.5 % for n - 1 degrees of freedom (n pairs, 2..10).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


class CpuMeter:
    """CPU seconds of a process: from a cgroup of its own when one can be
    made (ns resolution, every thread), else /proc/<pid>/stat ticks."""

    def __init__(self, pid, name):
        self.pid, self.group, self.read = pid, None, None
        candidates = [(pathlib.Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage", 1e9),
                      (pathlib.Path("/sys/fs/cgroup"), "cpu.stat", 1e6),
                      (pathlib.Path("/sys/fs/cgroup/unified"), "cpu.stat", 1e6)]
        for base, counter, scale in candidates:
            if base == pathlib.Path("/sys/fs/cgroup") and not (base / "cgroup.controllers").exists():
                continue  # not a cgroup v2 root
            if not (base / "cgroup.procs").exists():
                continue
            group = base / f"citadel-bench-{name}-{os.getpid()}"
            try:
                group.mkdir(exist_ok=True)
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:
                try:
                    group.rmdir()
                except OSError:
                    pass
                continue
            self.group = group
            self.resolution = "ns" if counter == "cpuacct.usage" else "µs"
            if counter == "cpuacct.usage":
                self.read = lambda: int((group / counter).read_text()) / scale
            else:
                self.read = lambda: int((group / counter).read_text().split()[1]) / scale
            return
        self.resolution = "clock ticks"
        self.read = lambda: self._ticks()

    def _ticks(self):
        fields = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def close(self):
        """Remove the cgroup (once the process has exited)."""
        if self.group is not None:
            for _ in range(100):
                try:
                    self.group.rmdir()
                    return
                except OSError:
                    time.sleep(0.05)


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
        meter = CpuMeter(node.pid, f"{interval_s}")
        time.sleep(3)  # past start-up (component load, first snapshot)
        before, started = meter.read(), time.monotonic()
        time.sleep(window_s)
        return (meter.read() - before) / (time.monotonic() - started), meter.resolution
    finally:
        node.terminate()
        node.wait(timeout=30)
        if "meter" in locals():
            meter.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per run")
    parser.add_argument("--pairs", type=int, default=3, help="baseline / 1 s runs, alternating")
    parser.add_argument("--out")
    args = parser.parse_args()
    baselines, every_seconds = [], []
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", workdir],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(args.pairs):
                baseline, resolution = node_cpu(args.citadel, args.guests, url, 3600, args.window, workdir)
                every_second, _ = node_cpu(args.citadel, args.guests, url, 1, args.window, workdir)
                baselines.append(baseline)
                every_seconds.append(every_second)
        finally:
            redis.terminate()
            redis.wait()
    differences = [ours - base for ours, base in zip(every_seconds, baselines)]
    mean = statistics.mean(differences)
    half = (T_975[len(differences) - 1] * statistics.stdev(differences) / len(differences) ** 0.5
            if len(differences) > 1 else float("nan"))
    summary = {
        "window_s": args.window,
        "pairs": args.pairs,
        "resolution": resolution,
        "idle_node_status_hourly_core_share": statistics.mean(baselines),
        "idle_node_status_every_second_core_share": statistics.mean(every_seconds),
        "telemetry_at_1s_core_share": mean,
        "telemetry_at_1s_ci95_core_share": [mean - half, mean + half],
        "differences_core_share": differences,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
