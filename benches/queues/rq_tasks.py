"""RQ side of the queue benchmark: a no-op job that counts itself."""
import os

import redis
from rq import Queue

URL = os.environ["BENCH_REDIS_URL"]
counter = redis.Redis.from_url(URL)


def noop():
    counter.incr("bench:done")


def enqueue(n):
    queue = Queue("bench", connection=redis.Redis.from_url(URL))
    for _ in range(n):
        queue.enqueue(noop)
