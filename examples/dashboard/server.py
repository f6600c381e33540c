#!/usr/bin/env python3
"""The live dashboard example: several streams, high-frequency updates
throttled per subscriber with `coalesce_key`, charts, alerts.

    # the hub, in another terminal; the page's origin may read its streams:
    cargo run --release -- serve --set 'cors.allowed_origins=["http://127.0.0.1:8001"]'
    python3 examples/dashboard/server.py        # then open http://127.0.0.1:8001/

Standard library only. The page uses herald-client (clients/js); this
script builds it first if clients/js/dist is missing (npm ci, npm run build).
HERALD_URL (default http://127.0.0.1:8080) names the hub.
"""
import math
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examplekit import HUB, Handler, publish, serve  # noqa: E402

PORT = int(os.environ.get("PORT", "8001"))
TICK = float(os.environ.get("TICK_SECS", "0.05"))


def metrics():
    """20 samples a second per metric, one batch per tick. Each metric has
    its coalesce_key: a subscriber that falls behind gets the newest value,
    not a backlog of stale ones."""
    t = 0
    orders = 0
    while True:
        t += 1
        cpu = 50 + 30 * math.sin(t / 40) + random.uniform(-5, 5)
        rps = max(0, 800 + 300 * math.sin(t / 25) + random.uniform(-60, 60))
        orders += random.random() < 0.2
        batch = [
            {"topic": "metrics/cpu", "event": "sample", "coalesce_key": "cpu", "ttl": 60,
             "data": {"name": "cpu", "t": time.time(), "value": round(cpu, 1)}},
            {"topic": "metrics/requests", "event": "sample", "coalesce_key": "requests", "ttl": 60,
             "data": {"name": "requests", "t": time.time(), "value": round(rps)}},
            {"topic": "metrics/orders", "event": "sample", "coalesce_key": "orders", "ttl": 60,
             "data": {"name": "orders", "t": time.time(), "value": orders}},
        ]
        if cpu > 78 and t % 20 == 0:
            batch.append({"topic": "alerts", "event": "alert",
                          "data": {"level": "warning", "text": f"CPU at {cpu:.0f}%"}})
        try:
            publish(batch)
        except OSError as e:
            print(f"publish failed ({e}); is the hub running at {HUB}?")
            time.sleep(1)
        time.sleep(TICK)


class Page(Handler):
    folder = os.path.dirname(os.path.abspath(__file__))


if __name__ == "__main__":
    threading.Thread(target=metrics, daemon=True).start()
    serve(Page, PORT)
