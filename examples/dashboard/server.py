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
import json
import math
import mimetypes
import os
import random
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "..", "..", "clients", "js")
HUB = os.environ.get("HERALD_URL", "http://127.0.0.1:8080").rstrip("/")
PORT = int(os.environ.get("PORT", "8001"))
TICK = float(os.environ.get("TICK_SECS", "0.05"))


def publish(batch):
    body = json.dumps(batch).encode()
    req = urllib.request.Request(f"{HUB}/v1/publish", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


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


class Files(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/":
            path = "/index.html"
        if path.startswith("/client/"):
            root, rel = os.path.join(CLIENT, "dist"), path[len("/client/"):]
        else:
            root, rel = HERE, path.lstrip("/")
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(os.path.realpath(root)) or not os.path.isfile(full) or full.endswith(".py"):
            self.send_error(404)
            return
        body = open(full, "rb").read()
        if full.endswith("index.html"):
            body = body.replace(b"{{HUB}}", HUB.encode())
        self.send_response(200)
        kind = "text/javascript" if full.endswith(".js") else mimetypes.guess_type(full)[0]
        self.send_header("Content-Type", kind or "application/octet-stream")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def build_client():
    if os.path.exists(os.path.join(CLIENT, "dist", "index.js")):
        return
    print("building herald-client (clients/js) ...")
    if not os.path.isdir(os.path.join(CLIENT, "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True)
    subprocess.run(["npm", "run", "build"], cwd=CLIENT, check=True)


if __name__ == "__main__":
    build_client()
    threading.Thread(target=metrics, daemon=True).start()
    print(f"open http://127.0.0.1:{PORT}/ (hub: {HUB})", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Files).serve_forever()
