#!/usr/bin/env python3
"""Recovery figures of release `citadel work` nodes on one local Redis, with
the default settings (liveness TTL 5 s, reclaim sweep every 1 s, cancel
flags read every 250 ms):

- resume: node A runs two `slow` jobs; node B starts beside it; A is killed
  with SIGKILL; the time from the kill until both jobs have started again
  on B (their second `start` event, read from Pub/Sub). The baseline is the
  liveness TTL: by design a worker's jobs are taken only once its key has
  expired, so a live worker's long job is never run twice.
- cancel: a running `slow` job's flag `job:cancelled:{id}` is set; the time
  until its `cancelled` event arrives. The baseline is the poll interval
  (`worker.cancel_poll_ms`).

Prints a JSON summary (and writes --out) for scripts/bench-table.py.
"""

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from run import RedisServer, stop  # noqa: E402

TTL_MS, RECLAIM_MS, CANCEL_POLL_MS = 5000, 1000, 250


def node(args, server, workdir, name):
    env = dict(os.environ, CITADEL_SANDBOX__CACHE_DIR=str(workdir / "cache"), CITADEL_LOG="warn",
               CITADEL_WORKER__LIVENESS_TTL_MS=str(TTL_MS), CITADEL_WORKER__RECLAIM_INTERVAL_MS=str(RECLAIM_MS),
               CITADEL_WORKER__CANCEL_POLL_MS=str(CANCEL_POLL_MS), CITADEL_WORKER__SHUTDOWN_GRACE_MS="0")
    return subprocess.Popen(
        [args.citadel, "work", "--redis-url", server.url, "--queue", "recovery", "--node-id", name,
         "--status-addr", "127.0.0.1:0",
         "--handler", f"slow={args.guests}/slow.wasm"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / f"{name}.log", "a"))


class Events:
    """Every job event of the run, timestamped on arrival."""

    def __init__(self, server):
        self.pubsub = server.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("stream:v1:*")
        self.unclaimed, self.last = [], None

    def until(self, predicate, timeout=60):
        """The arrival time of the first event not yet taken for which
        `predicate(event)` holds, reading more until one does (events that
        arrived meanwhile are kept for later calls)."""
        for index, (arrived, event) in enumerate(self.unclaimed):
            if predicate(event):
                del self.unclaimed[index]
                self.last = event
                return arrived
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            message = self.pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            arrived = time.perf_counter()
            event = json.loads(message["data"])
            if predicate(event):
                self.last = event
                return arrived
            self.unclaimed.append((arrived, event))
        raise RuntimeError(f"timed out waiting for an event; last ones: {self.unclaimed[-5:]}")


def enqueue(server, job, ms):
    server.client.xadd("jobs:v1:recovery", {"jobId": job, "type": "slow",
                                            "payload": json.dumps({"ms": ms, "chunks": ms // 100})})


def resume_round(args, server, workdir, n):
    server.client.flushall()
    events = Events(server)
    doomed = node(args, server, workdir, "doomed")
    survivor = None
    try:
        jobs = [f"resume-{n}-{k}" for k in range(2)]
        for job in jobs:
            enqueue(server, job, 30_000)
        for job in jobs:
            events.until(lambda event, job=job: event["jobId"] == job and event["type"] == "start")
        survivor = node(args, server, workdir, "survivor")
        deadline = time.time() + 30
        # The survivor's own liveness key: it is up and sweeping.
        while not server.client.keys("citadel:v1:consumer:citadel-workers:survivor-*"):
            if time.time() > deadline:
                raise RuntimeError("the second node never beat: " + (workdir / "survivor.log").read_text()[-2000:])
            time.sleep(0.01)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        killed = time.perf_counter()
        waiting = set(jobs)
        while waiting:
            last = events.until(lambda event: event["type"] == "start" and event["jobId"] in waiting
                                and event["data"]["meta"]["node_id"] == "survivor")
            waiting.discard(events.last["jobId"])
        return last - killed
    finally:
        stop([proc for proc in (doomed, survivor) if proc])
        events.pubsub.close()


def cancel_rounds(args, server, workdir):
    server.client.flushall()
    events = Events(server)
    worker = node(args, server, workdir, "canceller")
    samples = []
    try:
        for n in range(args.cancels):
            job = f"cancel-{n}"
            enqueue(server, job, 30_000)
            events.until(lambda event: event["jobId"] == job and event["type"] == "chunk")
            server.client.set(f"job:cancelled:{job}", 1)
            flagged = time.perf_counter()
            samples.append(events.until(lambda event: event["jobId"] == job and event["type"] == "cancelled") - flagged)
    finally:
        stop([worker])
        events.pubsub.close()
    return samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cancels", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        server = RedisServer(workdir)
        try:
            resume = [resume_round(args, server, workdir, n) for n in range(args.rounds)]
            cancel = cancel_rounds(args, server, workdir)
        finally:
            server.stop()
    ms = lambda seconds: round(seconds * 1000, 1)
    summary = {
        "liveness_ttl_ms": TTL_MS, "reclaim_interval_ms": RECLAIM_MS, "cancel_poll_ms": CANCEL_POLL_MS,
        "resume_rounds": len(resume), "resume_ms": [ms(s) for s in resume],
        "resume_median_ms": ms(statistics.median(resume)), "resume_max_ms": ms(max(resume)),
        "cancels": len(cancel), "cancel_median_ms": ms(statistics.median(cancel)), "cancel_max_ms": ms(max(cancel)),
    }
    print(json.dumps(summary))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
