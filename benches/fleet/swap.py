#!/usr/bin/env python3
"""Publish-to-served benchmark: how long after `citadel component publish`
returns does a running `citadel work` node serve the first job with the new
component?

A release node serves job type `bench` with `echo` (published). Each round
publishes a fresh variant of `extract` (its bytes plus a custom section, so
a new digest the node has never compiled) with the real CLI, then enqueues
a job every 10 ms until one is answered by extract (its result has
`word_count`): `swap_compile` is the time from the CLI's return to that
job's completion (fetch, digest and signature checks, compile, swap, the
job). Then `citadel component rollback` points the job type back at echo,
which the node has compiled before: `swap_cached`. The baseline, in the
same run, is the same enqueue-to-completion path on a handler that does not
change (`job`). Every job enqueued during the run is accounted for at the
end by its final status: any that failed or never finished is reported.

Prints a JSON summary (and writes --out) for scripts/bench-table.py.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import redis

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "queues"))
from run import RedisServer, stop  # noqa: E402

PAYLOAD = json.dumps({"content": "<h1>Swap</h1><p>three small words</p>", "format": "html"})


def variant(component: bytes, n: int) -> bytes:
    """`component` with a custom section appended: same code, new digest."""
    def leb(value):
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)
    name = b"citadel-bench"
    payload = f"variant {n}".encode()
    body = leb(len(name)) + name + payload
    return component + b"\x00" + leb(len(body)) + body


class Node:
    def __init__(self, args, server, workdir):
        self.r = server.client
        self.args, self.server = args, server
        env = dict(os.environ, CITADEL_SANDBOX__CACHE_DIR=str(workdir / "node-cache"), CITADEL_LOG="info")
        self.log = open(workdir / "node.log", "w")
        self.proc = subprocess.Popen(
            [args.citadel, "work", "--redis-url", server.url, "--queue", "bench", "--node-id", "bench",
             "--handler", f"echo={args.guests}/echo.wasm", "--status-addr", "127.0.0.1:0"],
            env=env, stdout=self.log, stderr=self.log)
        self.jobs = 0

    def cli(self, *argv):
        env = dict(os.environ, CITADEL_SANDBOX__CACHE_DIR=str(self.args.workdir / "cli-cache"))
        started = time.perf_counter()
        subprocess.run([self.args.citadel, "component", *argv, "--redis-url", self.server.url], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    def enqueue(self):
        self.jobs += 1
        job = f"job-{self.jobs}"
        self.r.xadd("jobs:v1:bench", {"jobId": job, "type": "bench", "payload": PAYLOAD})
        return job

    def result(self, job):
        state = self.r.hgetall(f"job:{job}:status")
        if state.get(b"status") != b"completed":
            return None
        return json.loads(state[b"result"])

    def until_served(self, is_new, timeout=30):
        """Enqueue a job every 10 ms until one completes with a result
        `is_new` accepts; seconds until then."""
        started = time.perf_counter()
        waiting = []
        last_enqueue = 0.0
        while time.perf_counter() - started < timeout:
            now = time.perf_counter()
            if now - last_enqueue >= 0.01:
                waiting.append(self.enqueue())
                last_enqueue = now
            for job in list(waiting):
                result = self.result(job)
                if result is None:
                    continue
                waiting.remove(job)
                if is_new(result):
                    return time.perf_counter() - started
            time.sleep(0.002)
        raise RuntimeError("the new handler never served a job")

    def outcomes(self, timeout=30):
        """Every job enqueued so far, by final status, once none is still
        running (or `timeout` passed: those count as `unfinished`)."""
        deadline = time.perf_counter() + timeout
        while True:
            pipe = self.r.pipeline(transaction=False)
            for n in range(1, self.jobs + 1):
                pipe.hget(f"job:job-{n}:status", "status")
            statuses = [status.decode() if status else "unfinished" for status in pipe.execute()]
            unsettled = [s for s in statuses if s in ("unfinished", "running", "retrying")]
            if not unsettled or time.perf_counter() > deadline:
                counts = {}
                for status in statuses:
                    status = "unfinished" if status in ("running", "retrying") else status
                    counts[status] = counts.get(status, 0) + 1
                return counts
            time.sleep(0.05)

    def job_time(self):
        job = self.enqueue()
        started = time.perf_counter()
        while self.result(job) is None:
            time.sleep(0.002)
        return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = workdir = pathlib.Path(tmp)
        server = RedisServer(workdir)
        node = Node(args, server, workdir)
        try:
            extract = pathlib.Path(args.guests, "extract.wasm").read_bytes()
            node.cli("publish", f"{args.guests}/echo.wasm", "--job-type", "bench")
            node.until_served(lambda result: "word_count" not in result)
            compile_s, cached_s, publish_s, job_s = [], [], [], []
            for n in range(args.rounds):
                path = workdir / f"extract-{n}.wasm"
                path.write_bytes(variant(extract, n))
                publish_s.append(node.cli("publish", str(path), "--job-type", "bench"))
                compile_s.append(node.until_served(lambda result: "word_count" in result))
                node.cli("rollback", "--job-type", "bench")
                cached_s.append(node.until_served(lambda result: "word_count" not in result))
                job_s.extend(node.job_time() for _ in range(5))
            outcomes = node.outcomes()
        finally:
            stop([node.proc])
            server.stop()
    ms = lambda samples: round(statistics.median(samples) * 1000, 1)
    summary = {"rounds": args.rounds, "swap_compile_ms": ms(compile_s), "swap_compile_max_ms": round(max(compile_s) * 1000, 1),
               "swap_cached_ms": ms(cached_s), "publish_cli_ms": ms(publish_s), "job_ms": ms(job_s),
               "jobs": sum(outcomes.values()), "outcomes": outcomes}
    print(json.dumps(summary))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
