"""Celery side of the queue benchmark: a no-op task that counts itself."""
import os

import redis
from celery import Celery

URL = os.environ["BENCH_REDIS_URL"]
app = Celery("bench", broker=URL)
app.conf.task_ignore_result = True
counter = redis.Redis.from_url(URL)


@app.task
def noop():
    counter.incr("bench:done")


def enqueue(n):
    for _ in range(n):
        noop.delay()
