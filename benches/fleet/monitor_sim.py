#!/usr/bin/env python3
"""Fleet simulator for `citadel monitor`: N nodes x G GPUs on one local
redis-server, speaking the nodes' real wire formats (a full StatusMessage
per node on node:status:stream, heartbeats on citadel:v1:heartbeats, fleet
events on citadel:v1:events), with S clients on the monitor's live stream.

Measures, in one run:
- the monitor's RSS idle (no node, no client: the baseline) and with the
  whole fleet and every stream client connected;
- crash detection: K nodes stop beating without a word; the time from a
  node's last heartbeat (its stream entry's Redis time) to the NODE_DOWN
  alert reaching a live-stream client, in heartbeat intervals;
- clean stop: K nodes write `node.stopping`; the time until a live-stream
  client hears the node is offline;
- storage: bytes per stored event (the database's pages in use, indexes
  included, per event added through POST /v1/events/batch), against the
  event's own JSON size.

Prints a JSON summary (and writes it to --out); scripts/bench-table.py turns
it into the README table.
"""

import argparse
import http.client
import json
import pathlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import redis


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def status_message(node, gpus):
    gpu = [{
        "index": index, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{node}-{index}",
        "memory_used_mb": 1000 * (index + 1), "memory_total_mb": 81559,
        "memory_free_mb": 81559 - 1000 * (index + 1), "utilization_percent": (index * 11) % 100,
        "memory_utilization_percent": 10, "temperature_celsius": 50 + index, "power_watts": 300.5,
        "clocks_mhz": {"graphics": 1980, "sm": 1980, "memory": 2619}, "driver": "580.159.04", "processes": [],
    } for index in range(gpus)]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({
        "version": "1.0", "timestamp": now, "nodeId": node,
        "status": {
            "version": "0.1.0", "timestamp": now,
            "node": {"name": node, "id": node, "tags": ["sim"], "device_config": None, "uptime_seconds": 10,
                     "mode": "redis"},
            "system": {"cpu_percent": 12.5, "memory_used_gb": 100.0, "memory_total_gb": 1024.0,
                       "memory_percent": 9.8, "memory_available_gb": 924.0, "disk_used_gb": 500.0,
                       "disk_total_gb": 2000.0, "disk_available_gb": 1500.0, "disk_percent": 25.0, "disks": []},
            "gpu": gpu, "gpu_source": "nvml", "gpu_unavailable_reason": None,
            "services": [{"name": "vllm", "type": "inference", "status": "running", "port": 8000, "health": "ok",
                          "models": ["llama-3-70b"], "backends": ["vllm"]}],
            "worker": {"consuming": True, "in_flight": 0, "processed": 0, "failed": 0,
                       "last_job_consumed_at": None},
            "handlers": [{"job_type": "llm_inference", "digest": None, "source": "config"}],
            "processes": [], "collector_errors": [],
        },
    })


class Stream(threading.Thread):
    """One live-stream client; `record` keeps (arrival, event, data)."""

    def __init__(self, port, record=False, source="127.0.0.1"):
        super().__init__(daemon=True)
        self.port, self.record, self.seen, self.source = port, record, [], source
        self.connected = threading.Event()

    def run(self):
        # Each client from a loopback address of its own, as users of a
        # dashboard come from their own machines (the monitor caps
        # connections per client address).
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600, source_address=(self.source, 0))
        conn.request("GET", "/v1/stream")
        response = conn.getresponse()
        self.connected.set()
        kind = None
        while True:
            line = response.readline()
            if not line:
                return
            line = line.decode().rstrip("\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and self.record and kind in ("alert", "node"):
                self.seen.append((time.time(), kind, json.loads(line[5:])))


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return response.read().decode()


def post(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body.encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status


def metric(port, name):
    for line in get(port, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def start_redis(workdir, port):
    """A private redis-server on `port`, answering; (process, client)."""
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(workdir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return server, r


def start_monitor(citadel, workdir, redis_port, api_port, *flags):
    """`citadel monitor` on that Redis, its database in `workdir`."""
    return subprocess.Popen(
        [citadel, "--log", "warn", "monitor", "--redis-url", f"redis://127.0.0.1:{redis_port}",
         "--db", str(workdir / "monitor.sqlite"), "--addr", f"127.0.0.1:{api_port}", *flags],
        stdout=subprocess.DEVNULL)


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def passive_clients(port, count):
    """Hold `count` live-stream clients open, reading, until killed (its
    own process: their reading never takes the heartbeat driver's turn)."""
    clients = [Stream(port, source=f"127.0.{1 + index // 250}.{1 + index % 250}") for index in range(count)]
    for client in clients:
        client.start()
    for client in clients:
        client.connected.wait(30)
    print(sum(client.connected.is_set() for client in clients), flush=True)
    threading.Event().wait()


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--passive-clients":
        passive_clients(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--heartbeat-ms", type=int, default=1000)
    parser.add_argument("--victims", type=int, default=20)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--out")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="citadel-monitor-sim-"))
    redis_port, api_port = free_port(), free_port()
    server, r = start_redis(workdir, redis_port)
    monitor = start_monitor(args.citadel, workdir, redis_port, api_port)
    alive = {f"sim-{index:04d}" for index in range(args.nodes)}
    stop = threading.Event()
    passive = None
    summary = {"nodes": args.nodes, "gpus": args.gpus, "clients": args.clients, "heartbeat_ms": args.heartbeat_ms}
    try:
        for _ in range(200):
            try:
                get(api_port, "/v1/health")
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1)
        summary["rss_idle_mib"] = rss_mib(monitor.pid)

        # Every node's first status, then heartbeats, spread over the interval.
        pipe = r.pipeline(transaction=False)
        for node in sorted(alive):
            pipe.xadd("node:status:stream", {"nodeId": node, "timestamp": "now", "status": "online",
                                             "payload": status_message(node, args.gpus)},
                      maxlen=10000, approximate=True)
        pipe.execute()
        last_beat = {}

        def beat():
            slices = 10
            tick = args.heartbeat_ms / 1000 / slices
            order = sorted(alive)
            step = 0
            while not stop.is_set():
                started = time.time()
                share = [node for index, node in enumerate(order) if index % slices == step % slices and node in alive]
                pipe = r.pipeline(transaction=False)
                for node in share:
                    pipe.xadd("citadel:v1:heartbeats", {"node": node, "at": int(time.time() * 1000),
                                                        "intervalMs": args.heartbeat_ms, "inFlight": 0},
                              maxlen=10000, approximate=True)
                ids = pipe.execute()
                for node, entry in zip(share, ids):
                    last_beat[node] = int(entry.decode().split("-")[0]) / 1000
                step += 1
                time.sleep(max(0.0, tick - (time.time() - started)))

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        recorder = Stream(api_port, record=True)
        recorder.start()
        recorder.connected.wait(30)
        passive = subprocess.Popen([sys.executable, __file__, "--passive-clients", str(api_port), str(args.clients - 1)],
                                   stdout=subprocess.PIPE, text=True)
        connected = int(passive.stdout.readline())
        if connected != args.clients - 1:
            raise RuntimeError(f"only {connected} of {args.clients - 1} passive clients got a live stream")
        deadline = time.time() + 120
        while time.time() < deadline:
            up = json.loads(get(api_port, "/v1/status/summary"))["nodes"].get("up", 0)
            if up == args.nodes:
                break
            time.sleep(0.5)
        time.sleep(3 * args.heartbeat_ms / 1000)
        summary["rss_fleet_mib"] = rss_mib(monitor.pid)
        started = time.time()
        get(api_port, "/v1/nodes?state=up&min_free_vram_mb=20000&model=llama-3-70b")
        summary["query_http_ms"] = (time.time() - started) * 1000

        # Crashes: victims stop beating, one at a time at random phases.
        victims = random.sample(sorted(alive), args.victims)
        for node in victims:
            alive.discard(node)
            time.sleep(random.uniform(0, args.heartbeat_ms / 1000 / 2))
        # Clean stops.
        leavers = random.sample(sorted(alive), args.victims)
        sent = {}
        for node in leavers:
            alive.discard(node)
            event = {"sourceType": "citadel", "eventType": "node.stopping", "level": "INFO",
                     "message": f"{node} is stopping cleanly", "node": node}
            sent[node] = time.time()
            r.xadd("citadel:v1:events", {"type": "node.stopping", "node": node, "event": json.dumps(event)})
            time.sleep(0.05)
        deadline = time.time() + 30 + 10 * args.heartbeat_ms / 1000
        while time.time() < deadline:
            downs = {data["alert"]["node"] for _, kind, data in recorder.seen
                     if kind == "alert" and data["change"] == "opened" and data["alert"]["alertType"] == "NODE_DOWN"}
            offline = {data["id"] for _, kind, data in recorder.seen if kind == "node" and data["state"] == "offline"}
            if set(victims) <= downs and set(leavers) <= offline:
                break
            time.sleep(0.2)
        detection = []
        for node in victims:
            arrival = next((at for at, kind, data in recorder.seen if kind == "alert"
                            and data["change"] == "opened" and data["alert"]["alertType"] == "NODE_DOWN"
                            and data["alert"]["node"] == node), None)
            if arrival is not None:
                detection.append((arrival - last_beat[node]) / (args.heartbeat_ms / 1000))
        offline_ms = []
        for node in leavers:
            arrival = next((at for at, kind, data in recorder.seen if kind == "node" and data["id"] == node
                            and data["state"] == "offline"), None)
            if arrival is not None:
                offline_ms.append((arrival - sent[node]) * 1000)
        summary["down_detected"] = len(detection)
        summary["down_beats_p50"] = statistics.median(detection) if detection else None
        summary["down_beats_p99"] = percentile(detection, 0.99) if detection else None
        summary["offline_detected"] = len(offline_ms)
        summary["offline_ms_p50"] = statistics.median(offline_ms) if offline_ms else None
        summary["offline_ms_p99"] = percentile(offline_ms, 0.99) if offline_ms else None
        false_downs = {data["alert"]["node"] for _, kind, data in recorder.seen if kind == "alert"
                       and data["alert"]["alertType"] == "NODE_DOWN"} - set(victims)
        summary["false_node_down"] = len(false_downs)

        # Storage per event.
        stop.set()
        before_bytes, before_events = metric(api_port, "citadel_monitor_db_bytes"), metric(api_port, "citadel_monitor_events_stored")
        event = {"sourceType": "chief", "eventType": "job.completed", "level": "INFO",
                 "message": "sample-etl-pipeline completed in 1.8 s", "jobName": "sample-etl-pipeline",
                 "runId": "run-0", "node": "sim-0001", "meta": {"durationMs": 1800}}
        for start in range(0, args.events, 1000):
            batch = [dict(event, runId=f"run-{start + index}") for index in range(1000)]
            post(api_port, "/v1/events/batch", json.dumps(batch))
        after_bytes, after_events = metric(api_port, "citadel_monitor_db_bytes"), metric(api_port, "citadel_monitor_events_stored")
        summary["bytes_per_event"] = (after_bytes - before_bytes) / max(1.0, after_events - before_events)
        summary["event_json_bytes"] = len(json.dumps(event))
    finally:
        stop.set()
        if passive is not None:
            passive.kill()
            passive.wait()
        monitor.terminate()
        monitor.wait(timeout=30)
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
