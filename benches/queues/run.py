#!/usr/bin/env python3
"""End-to-end queue benchmark: citadel vs its floor, Celery, RQ and Dramatiq.

Every system gets its own fresh run against the same local redis-server
(TCP loopback), the same number of no-op jobs, pre-enqueued before its
worker starts. A job is done when its worker has finished it: for citadel
(`echo` with an empty payload: claimed/start/end events, status hash,
acknowledgement) when the consumer group has read and acknowledged it, for
the peers when the task body has incremented a Redis counter. The rate is
measured from the first finished job to the last, so worker start-up does
not count; only completed jobs count (citadel's status hashes say which),
the others are reported.

The floor (benches/queue_floor.rs) does exactly citadel's Redis work per
job, built by the same code, with nothing else and the fewest round trips:
what this box's Redis allows. A lone job's round trip (enqueue -> `end` on
Pub/Sub, one at a time) is measured through citadel and the floor.

Then chunk latency: the `ticker` handler emits chunks stamped with the wall
clock at emit; a redis-py subscriber records how long each took to arrive.
The baseline, in the same run, is a plain PUBLISH of a timestamp from
another Python process to the same subscriber.

Prints a JSON summary to stdout (and to --out); scripts/bench-table.py
turns it into the README table.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import redis

HERE = pathlib.Path(__file__).resolve().parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, workdir):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        deadline = time.time() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def measure(done, total, timeout):
    """Poll `done()` until it reaches `total`; return jobs/s between the
    first and the last finished job."""
    first = None
    deadline = time.time() + timeout
    while True:
        now = time.perf_counter()
        count = done()
        if first is None and count > 0:
            first = (now, count)
        if count >= total:
            return (total - first[1]) / (now - first[0]) if now > first[0] else float("inf")
        if time.time() > deadline:
            raise RuntimeError(f"only {count} of {total} jobs done after {timeout}s")
        time.sleep(0.01)


def stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def enqueue_noops(r, jobs, queue="bench", prefix="job"):
    pipe = r.pipeline(transaction=False)
    for n in range(jobs):
        pipe.xadd(f"jobs:v1:{queue}", {"jobId": f"{prefix}-{n}", "type": "noop", "payload": "{}"})
    pipe.execute()


def citadel_worker(args, server, workdir, queue, fleet_events=True):
    env = dict(os.environ, CITADEL_SANDBOX__CACHE_DIR=str(workdir / "cache"), CITADEL_LOG="warn",
               CITADEL_TELEMETRY__EVENTS="true" if fleet_events else "false")
    return subprocess.Popen(
        [args.citadel, "work", "--redis-url", server.url, "--queue", queue, "--concurrency", str(args.citadel_concurrency),
         "--handler", f"noop={args.guests}/echo.wasm", "--node-id", "bench"],
        env=env, stdout=subprocess.DEVNULL)


def floor_worker(args, server, queue):
    return subprocess.Popen([args.floor, "--redis-url", server.url, "--queue", queue], stdout=subprocess.DEVNULL)


def bench_consumer(args, server, start):
    """Pre-enqueue the no-op jobs, start the consumer (`start()`), and time
    it: jobs/s from the first acknowledged job to the last, counting only
    the completed ones (their status hashes), failures reported apart."""
    r = server.client
    r.flushall()
    enqueue_noops(r, args.jobs)
    worker = start()
    try:
        rate = measure(lambda: acknowledged(r), args.jobs, args.timeout)
        outcomes = statuses(r, args.jobs)
        if args.cpu:
            ticks = sum(int(field) for field in pathlib.Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
            switches = 0
            for task in pathlib.Path(f"/proc/{worker.pid}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                        switches += int(line.split()[1])
            print(f"  worker CPU: {ticks / os.sysconf('SC_CLK_TCK') / args.jobs * 1e6:.0f} µs per job, "
                  f"{switches / args.jobs:.1f} context switches per job (live threads)", file=sys.stderr)
        # Only completed jobs count: a failed or dead-lettered job is
        # settled too, but it is not work done.
        completed = outcomes.get("completed", 0)
        return {"jobs_per_s": rate * completed / args.jobs, "completed": completed,
                "not_completed": {status: n for status, n in outcomes.items() if status != "completed"}}
    finally:
        stop([worker])


def bench_citadel(args, server, workdir, fleet_events=True):
    """citadel work on the queue; `fleet_events` off runs the same node
    without its citadel:v1:events writes (their cost, same run)."""
    return bench_consumer(args, server, lambda: citadel_worker(args, server, workdir, "bench", fleet_events))


def bench_floor(args, server, workdir):
    """The floor: the same Redis work per job, nothing else (benches/queue_floor.rs)."""
    return bench_consumer(args, server, lambda: floor_worker(args, server, "bench"))


def bench_lone(args, server, workdir):
    """A lone job's round trip at low load: enqueue -> its `end` on
    Pub/Sub, one job at a time, through citadel and through the floor."""
    r = server.client
    results = {}
    for name, start in (("citadel", lambda: citadel_worker(args, server, workdir, "lone")),
                        ("floor", lambda: floor_worker(args, server, "lone"))):
        r.flushall()
        worker = start()
        try:
            pubsub = r.pubsub(ignore_subscribe_messages=True)
            samples = []
            for n in range(args.lone_jobs + 20):
                job = f"lone-{n}"
                pubsub.subscribe(f"stream:v1:{job}")
                pubsub.get_message(timeout=1.0)
                sent = time.perf_counter_ns()
                r.xadd("jobs:v1:lone", {"jobId": job, "type": "noop", "payload": "{}"})
                deadline = time.time() + args.timeout
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message and json.loads(message["data"])["type"] == "end":
                        break
                    if time.time() > deadline:
                        raise RuntimeError(f"{name}: no end for {job} after {args.timeout}s")
                if n >= 20:  # the first ones warm up (component load, connections)
                    samples.append(time.perf_counter_ns() - sent)
                pubsub.unsubscribe(f"stream:v1:{job}")
            pubsub.close()
            results[name] = percentiles(samples)
        finally:
            stop([worker])
    return results


def acknowledged(r, queue="bench"):
    """Entries of `jobs:v1:<queue>` the consumer group has read and settled."""
    try:
        groups = r.xinfo_groups(f"jobs:v1:{queue}")
    except redis.ResponseError:
        return 0
    group = next((g for g in groups if g["name"] == b"citadel-workers"), None)
    return 0 if group is None else (group["entries-read"] or 0) - group["pending"]


def statuses(r, jobs):
    """How many of the bench's jobs ended in each status (their status hashes)."""
    pipe = r.pipeline(transaction=False)
    for n in range(jobs):
        pipe.hget(f"job:job-{n}:status", "status")
    counts = {}
    for status in pipe.execute():
        status = status.decode() if status else "none"
        counts[status] = counts.get(status, 0) + 1
    return counts


def python_env(workdir, url):
    return dict(os.environ, BENCH_REDIS_URL=url, PYTHONPATH=str(HERE), PYTHONDONTWRITEBYTECODE="1")


def counter(r):
    return lambda: int(r.get("bench:done") or 0)


def bench_celery(args, server, workdir):
    r = server.client
    r.flushall()
    env = python_env(workdir, server.url)
    subprocess.run([sys.executable, "-c", f"import celery_app; celery_app.enqueue({args.jobs})"], env=env, check=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--concurrency", "2", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return measure(counter(r), args.jobs, args.timeout)
    finally:
        stop([worker])


def bench_rq(args, server, workdir, worker_class=None):
    r = server.client
    r.flushall()
    env = python_env(workdir, server.url)
    subprocess.run([sys.executable, "-c", f"import rq_tasks; rq_tasks.enqueue({args.jobs})"], env=env, check=True)
    extra = ["--worker-class", worker_class] if worker_class else []
    workers = [
        subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--url", server.url, "--quiet", *extra, "bench"],
                         env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        return measure(counter(r), args.jobs, args.timeout)
    finally:
        stop(workers)


def bench_dramatiq(args, server, workdir):
    r = server.client
    r.flushall()
    env = python_env(workdir, server.url)
    subprocess.run([sys.executable, "-c", f"import dramatiq_app; dramatiq_app.enqueue({args.jobs})"], env=env, check=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "dramatiq_app", "--processes", "2", "--threads", "8"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return measure(counter(r), args.jobs, args.timeout)
    finally:
        stop([worker])


def percentiles(samples):
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    return {"p50_ms": pick(0.50) / 1e6, "p99_ms": pick(0.99) / 1e6, "count": len(samples)}


def subscribe(r, channel, expected, latencies, ready):
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    ready.set()
    for message in pubsub.listen():
        received = time.time_ns()
        data = message["data"]
        if channel.startswith("stream:v1:"):
            event = json.loads(data)
            if event["type"] != "chunk":
                if event["type"] in ("end", "error"):
                    break
                continue
            stamp = int(event["data"]["content"])
        else:
            stamp = int(data)
        latencies.append(received - stamp)
        if len(latencies) >= expected:
            break
    pubsub.close()


BASELINE_PUBLISHER = """
import sys, time, redis
url, chunks, interval_us = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
publisher = redis.Redis.from_url(url)
for _ in range(chunks):
    publisher.publish("raw", str(time.time_ns()))
    time.sleep(interval_us / 1e6)
"""


def bench_latency(args, server, workdir):
    r = server.client
    r.flushall()
    chunks, interval_us = args.chunks, 500
    # Baseline: Python PUBLISH of a timestamp -> the same subscriber.
    baseline, ready = [], threading.Event()
    thread = threading.Thread(target=subscribe, args=(redis.Redis.from_url(server.url), "raw", chunks, baseline, ready))
    thread.start()
    ready.wait()
    # From its own process, as citadel's chunks come from the worker's: a
    # publisher sharing the subscriber's process and GIL would slow the
    # baseline and flatter citadel.
    subprocess.run([sys.executable, "-c", BASELINE_PUBLISHER, server.url, str(chunks), str(interval_us)], check=True)
    thread.join(timeout=60)

    env = dict(os.environ, CITADEL_SANDBOX__CACHE_DIR=str(workdir / "cache"), CITADEL_LOG="warn")
    worker = subprocess.Popen(
        [args.citadel, "work", "--redis-url", server.url, "--queue", "lat", "--handler", f"tick={args.guests}/ticker.wasm",
         "--node-id", "bench"],
        env=env, stdout=subprocess.DEVNULL)
    try:
        # Warm-up job (compiles or loads the component), then the measured one.
        for job, count in (("warm", 50), ("lat", chunks)):
            latencies, ready = [], threading.Event()
            thread = threading.Thread(
                target=subscribe, args=(redis.Redis.from_url(server.url), f"stream:v1:{job}", count, latencies, ready))
            thread.start()
            ready.wait()
            payload = json.dumps({"chunks": count, "interval_us": interval_us})
            r.xadd("jobs:v1:lat", {"jobId": job, "type": "tick", "payload": payload})
            thread.join(timeout=120)
        return {"citadel": percentiles(latencies), "baseline": percentiles(baseline)}
    finally:
        stop([worker])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--floor", required=True, help="the floor consumer (target/release/citadel-queue-floor)")
    parser.add_argument("--lone-jobs", type=int, default=200)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--slow-jobs", type=int, default=2000, help="jobs for RQ (a fork per job: ~100/s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput runs per system, interleaved; the median is reported")
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--citadel-concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--only", nargs="*", default=[*THROUGHPUT, "lone", "latency"])
    parser.add_argument("--out", help="also write the JSON summary here")
    parser.add_argument("--cpu", action="store_true", help="print citadel's CPU time per job (diagnostic)")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="citadel-bench-"))
    server = RedisServer(workdir)
    results = {"jobs": args.jobs, "slow_jobs": args.slow_jobs, "rounds": args.rounds}
    rq_simple = lambda args, server, workdir: bench_rq(args, server, workdir, "rq.worker.SimpleWorker")
    no_events = lambda args, server, workdir: bench_citadel(args, server, workdir, fleet_events=False)
    throughput = {"floor": bench_floor, "citadel": bench_citadel, "citadel_no_events": no_events,
                  "celery": bench_celery, "rq": bench_rq, "rq_simple": rq_simple, "dramatiq": bench_dramatiq}
    slow_args = argparse.Namespace(**dict(vars(args), jobs=args.slow_jobs))
    try:
        # Rounds interleave the systems, so that a slow spell of this shared
        # machine lands on all of them rather than on one.
        runs = {}
        for round_ in range(args.rounds):
            for name in THROUGHPUT:
                if name not in args.only:
                    continue
                print(f"running {name} (round {round_ + 1} of {args.rounds})...", file=sys.stderr, flush=True)
                bench_args = slow_args if name.startswith("rq") else args
                runs.setdefault(name, []).append(throughput[name](bench_args, server, workdir))
                print(f"  {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
        results.update({name: median_run(each) for name, each in runs.items()})
        for name, bench in (("lone", bench_lone), ("latency", bench_latency)):
            if name in args.only:
                print(f"running {name}...", file=sys.stderr, flush=True)
                results[name] = bench(args, server, workdir)
                print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_summary(results, args.out)


THROUGHPUT = ("floor", "citadel", "citadel_no_events", "celery", "rq", "rq_simple", "dramatiq")


def median_run(runs):
    """The run with the median jobs/s (its completion counts kept), and
    every run's jobs/s."""
    rate = lambda run: run["jobs_per_s"] if isinstance(run, dict) else run
    middle = sorted(runs, key=rate)[len(runs) // 2]
    chosen = middle if isinstance(middle, dict) else {"jobs_per_s": middle}
    return dict(chosen, runs=[rate(run) for run in runs])


def write_summary(results, out):
    """Print the JSON summary, and write it to `out` when given."""
    summary = json.dumps(results, indent=2)
    print(summary)
    if out:
        pathlib.Path(out).write_text(summary)


if __name__ == "__main__":
    main()
