# docs/caches.md's L1 subscriber example, verbatim below this line (tests check they agree).
"""An L1 holder: an in-process LRU dict that drops what perfops' notices name."""

import json
import re
import threading
from collections import OrderedDict

import redis

CHANNEL = "perfops:cache:invalidate"  # settings.l1_channel in deployments/caches.yaml


class L1(OrderedDict):
    def __init__(self, size: int = 10_000) -> None:
        super().__init__()
        self.size, self.lock, self.invalidations = size, threading.Lock(), 0

    def put(self, key: str, value: object) -> None:
        with self.lock:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.size:
                self.popitem(last=False)

    def drop(self, notice: dict) -> None:
        with self.lock:
            regex = notice.get("regex")
            matching = [k for k in self if regex and re.fullmatch(regex, k)]
            for key in matching + notice.get("keys", []):
                self.pop(key, None)
            self.invalidations += 1


def listen(client: redis.Redis, l1: L1, ready: threading.Event) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    ready.set()
    for message in pubsub.listen():
        l1.drop(json.loads(message["data"]))
