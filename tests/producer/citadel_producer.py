#!/usr/bin/env python3
"""A producer written the way Citadel's own backend writes jobs (redis-py):
subscribe to stream:v1:{jobId} first, then XADD the job to jobs:v1:<queue>
with jobId, type, payload (JSON text), enqueuedAt and rayId, and read the
job's events until the final one (end, error or cancelled). Every event is
printed as one JSON line; the exit code is 0 once a final event arrived,
1 on timeout. Used by tests/citadel.rs."""

import argparse
import datetime
import json
import sys
import time
import uuid

import redis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--type", required=True, dest="job_type")
    parser.add_argument("--payload", required=True, help="the payload, JSON")
    parser.add_argument("--queue", default="gpu-general")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    job_id = str(uuid.uuid4())
    events = client.pubsub(ignore_subscribe_messages=True)
    events.subscribe(f"stream:v1:{job_id}")
    enqueued_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
    client.xadd(
        f"jobs:v1:{args.queue}",
        {
            "jobId": job_id,
            "type": args.job_type,
            "payload": args.payload,
            "enqueuedAt": enqueued_at,
            "rayId": f"ray-{job_id[:8]}",
        },
    )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        message = events.get_message(timeout=1.0)
        if message is None:
            continue
        event = json.loads(message["data"])
        print(json.dumps(event), flush=True)
        if event["type"] in ("end", "error", "cancelled"):
            return 0
    print(json.dumps({"type": "timeout", "jobId": job_id}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
