#!/usr/bin/env python3
"""Token latency and throughput: how much citadel adds between an engine and
a Redis subscriber.

The instrument is a synthetic OpenAI-compatible engine (this file,
`TokenSource`, in its own process): its `/v1/chat/completions` streams `max_tokens` tokens over
SSE, each token the wall-clock time of its emit in ns, at `--rate` tokens/s
(0: as fast as it can write). Three readers of the same source, same run:

- direct: a Python client reading the engine's SSE itself (the baseline);
- splice: an `llm_inference` job (`llm-chat`, stream) whose tokens the host
  splices into `chunk` events, read by a redis-py subscriber;
- pull: the same job with `splice: false`, each token pulled by the guest
  and emitted back (`complete` + `next` + `emit`).

Latency = receive time - emit time, p50/p99. Throughput: tokens/s from the
first token received to the last, on every path (the same window), with the
source unthrottled. Then one run of the
splice path against the real llama.cpp engine (`--llm URL`), where the
latency is measured from the engine's own SSE, read alongside.

Prints a JSON summary (and writes --out); scripts/bench-table.py renders it.
"""

import argparse
import http.client
import http.server
import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import redis

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "queues"))
from run import RedisServer, percentiles, stop, write_summary  # noqa: E402


class TokenSource(http.server.ThreadingHTTPServer):
    """A synthetic OpenAI-compatible engine streaming timestamped tokens."""

    daemon_threads = True

    def __init__(self, rate):
        self.rate = rate
        super().__init__(("127.0.0.1", 0), TokenHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        tokens = int(request.get("max_tokens") or 16)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        frame = lambda chunk: f"data: {json.dumps(chunk)}\n\n".encode()
        delta = lambda content: {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
        rate = self.server.rate
        start = time.perf_counter()
        try:
            self.wfile.write(frame({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}))
            batch = []
            for n in range(tokens):
                if rate:
                    wait = start + n / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    self.wfile.write(frame(delta(f"{time.time_ns()} ")))
                else:
                    batch.append(frame(delta(f"{time.time_ns()} ")))
                    if len(batch) == 64:
                        self.wfile.write(b"".join(batch))
                        batch = []
            self.wfile.write(b"".join(batch))
            self.wfile.write(frame({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
            self.wfile.write(frame({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": tokens}}))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


def serve_source(rate, urls):
    """Child process: serve a TokenSource until killed."""
    source = TokenSource(rate)
    urls.put(source.url)
    threading.Event().wait()


def start_source(rate):
    """A TokenSource in its own process (its writes must not share the
    readers' interpreter lock); (process, url)."""
    urls = multiprocessing.Queue()
    proc = multiprocessing.Process(target=serve_source, args=(rate, urls), daemon=True)
    proc.start()
    return proc, urls.get(timeout=30)


def read_sse(url, body, on_data):
    """POST `body` to an OpenAI-compatible engine and call on_data per `data:`."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    for line in response:
        if line.startswith(b"data: "):
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            on_data(data)
    conn.close()


def direct(url, tokens):
    """Read the engine's SSE directly: (latencies, receive times) of its tokens."""
    latencies, times = [], []

    def on_data(data):
        received = time.time_ns()
        chunk = json.loads(data)
        choices = chunk.get("choices") or [{}]
        content = (choices[0].get("delta") or {}).get("content")
        if content:
            latencies.append(received - int(content))
            times.append(received)

    read_sse(url, {"model": "synthetic", "messages": [], "max_tokens": tokens, "stream": True}, on_data)
    return latencies, times


def job_chunks(r, job_id, payload, expected, stamped=True):
    """Enqueue an llm_inference job; (latencies, receive times) of its chunks
    (latencies only when tokens are timestamps)."""
    latencies, times, ready = [], [], threading.Event()

    def listen():
        pubsub = redis.Redis.from_url(r_url).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"stream:v1:{job_id}")
        ready.set()
        for message in pubsub.listen():
            received = time.time_ns()
            event = json.loads(message["data"])
            if event["type"] == "chunk":
                if stamped:
                    latencies.append(received - int(event["data"]["content"].split()[0]))
                times.append(received)
            elif event["type"] in ("end", "error", "cancelled"):
                if event["type"] != "end":
                    print(f"job {job_id} ended with {event}", file=sys.stderr)
                break
        pubsub.close()

    thread = threading.Thread(target=listen)
    thread.start()
    ready.wait()
    r.xadd("jobs:v1:gpu-general", {"jobId": job_id, "type": "llm_inference", "payload": json.dumps(payload)})
    thread.join(timeout=600)
    if expected is not None and len(times) != expected:
        raise SystemExit(f"job {job_id}: {len(times)} chunks, expected {expected}")
    return latencies, times


r_url = None


def node(args, workdir, server, engine_url, engine_kind="openai", model="synthetic"):
    config = workdir / f"node-{model}.toml"
    policy = workdir / "policy.toml"
    policy.write_text(
        '[tenants.default]\ncapabilities = ["log", "stream", "inference"]\ninference.models = ["*"]\n'
        "max_chunks_per_second = 1000000\nmax_output_bytes = 268435456\ntimeout_ms = 600000\n")
    config.write_text(
        f'redis_url = "{server.url}"\npolicy = "{policy}"\nguests_dir = "{args.guests}"\n'
        f'[node]\nid = "bench"\n[telemetry]\nstatus_addr = "127.0.0.1:0"\n'
        f'[sandbox]\ncache_dir = "{workdir}/cache"\n'
        f'[[engines]]\nname = "engine"\nkind = "{engine_kind}"\nbase_url = "{engine_url}"\nmodels = ["{model}"]\n')
    log = open(workdir / f"node-{model}.log", "w")
    proc = subprocess.Popen([args.citadel, "--config", str(config), "work"], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while "worker ready" not in (workdir / f"node-{model}.log").read_text():
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit(f"the node did not start; see {log.name}")
        time.sleep(0.1)
    return proc


def main():
    global r_url
    parser = argparse.ArgumentParser()
    parser.add_argument("--citadel", required=True)
    parser.add_argument("--guests", required=True)
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per latency run")
    parser.add_argument("--rate", type=int, default=1000, help="tokens/s of the latency runs")
    parser.add_argument("--throughput-tokens", type=int, default=50000)
    parser.add_argument("--llm", help="base URL of the real llama.cpp engine, for one splice run against it")
    parser.add_argument("--out")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="citadel-inference-bench-"))
    server = RedisServer(workdir)
    r_url = server.url
    r = server.client
    results = {"tokens": args.tokens, "rate": args.rate}
    procs = []
    try:
        paced, paced_url = start_source(args.rate)
        results["direct"] = percentiles(direct(paced_url, args.tokens)[0])
        procs.append(node(args, workdir, server, paced_url))
        base = {"model": "synthetic", "messages": [{"role": "user", "content": "go"}]}
        job_chunks(r, "warm", dict(base, max_tokens=50), 50)
        for name, extra in (("splice", {}), ("pull", {"splice": False})):
            latencies, _ = job_chunks(r, f"lat-{name}", dict(base, max_tokens=args.tokens, **extra), args.tokens)
            results[name] = percentiles(latencies)
            print(f"  {name}: {results[name]}", file=sys.stderr, flush=True)
        stop(procs)
        procs.clear()

        paced.kill()
        fast, fast_url = start_source(0)
        # Every path over the same window: first token received to last.
        _, times = direct(fast_url, args.throughput_tokens)
        results["direct_tokens_per_s"] = (len(times) - 1) / ((times[-1] - times[0]) / 1e9)
        procs.append(node(args, workdir, server, fast_url))
        job_chunks(r, "warm2", dict(base, max_tokens=50), 50)
        for name, extra in (("splice", {}), ("pull", {"splice": False})):
            n = args.throughput_tokens
            _, times = job_chunks(r, f"tput-{name}", dict(base, max_tokens=n, **extra), n)
            results[f"{name}_tokens_per_s"] = (n - 1) / ((times[-1] - times[0]) / 1e9)
            print(f"  {name}: {results[f'{name}_tokens_per_s']:.0f} tokens/s", file=sys.stderr, flush=True)
        stop(procs)
        procs.clear()
        fast.kill()

        if args.llm:
            # The real engine: time to first token and decode rate, read
            # directly from its SSE, then through a spliced job (same prompt,
            # temperature 0, one after the other).
            procs.append(node(args, workdir, server, args.llm, model="smollm2"))
            chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Write a story about a dragon."}],
                    "max_tokens": 100, "temperature": 0}
            job_chunks(r, "llm-warm", dict(chat, max_tokens=4), None, stamped=False)
            arrivals, started = [], time.time_ns()
            read_sse(args.llm, dict(chat, stream=True),
                     lambda data: arrivals.append(time.time_ns()) if b'"content":"' in data else None)
            results["llm_direct"] = {"ttft_ms": (arrivals[0] - started) / 1e6,
                                     "tokens_per_s": (len(arrivals) - 1) / ((arrivals[-1] - arrivals[0]) / 1e9)}
            started = time.time_ns()
            _, times = job_chunks(r, "llm", chat, None, stamped=False)
            results["llm_splice"] = {"ttft_ms": (times[0] - started) / 1e6,
                                     "tokens_per_s": (len(times) - 1) / ((times[-1] - times[0]) / 1e9)}
            print(f"  real engine: {results['llm_direct']} direct, {results['llm_splice']} spliced", file=sys.stderr)
    finally:
        stop(procs)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_summary(results, args.out)


if __name__ == "__main__":
    main()
