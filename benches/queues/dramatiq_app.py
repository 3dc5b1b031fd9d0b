"""Dramatiq side of the queue benchmark: a no-op actor that counts itself."""
import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

URL = os.environ["BENCH_REDIS_URL"]
dramatiq.set_broker(RedisBroker(url=URL))
counter = redis.Redis.from_url(URL)


@dramatiq.actor
def noop():
    counter.incr("bench:done")


def enqueue(n):
    for _ in range(n):
        noop.send()
