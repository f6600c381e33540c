#!/usr/bin/env python3
"""The htmx example: a page with stock htmx-ext-sse reading a Herald topic,
and a publisher that sends it HTML fragments.

    # the hub, in another terminal; the page's origin may read its streams:
    cargo run --release -- serve --set 'cors.allowed_origins=["http://127.0.0.1:8000"]'
    python3 examples/htmx-feed/serve.py     # then open http://127.0.0.1:8000/

Standard library only. HERALD_URL (default http://127.0.0.1:8080) names
the hub; in dev mode it accepts publishes from loopback.
"""
import html
import http.server
import json
import os
import threading
import time
import urllib.request

HUB = os.environ.get("HERALD_URL", "http://127.0.0.1:8080").rstrip("/")
PORT = int(os.environ.get("PORT", "8000"))
PAGE = open(os.path.join(os.path.dirname(__file__), "index.html")).read().replace("{{HUB}}", HUB)


def publish(event, fragment):
    body = json.dumps({"topic": "feed", "event": event, "data": fragment}).encode()
    req = urllib.request.Request(f"{HUB}/v1/publish", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def publisher():
    n = 0
    while True:
        n += 1
        now = time.strftime("%H:%M:%S")
        try:
            publish("item", f"<li>\n  <b>Item {n}</b> at {html.escape(now)}\n</li>")
            publish("status", f"{n} items so far")
        except OSError as e:
            print(f"publish failed ({e}); is the hub running at {HUB}?")
        time.sleep(2)


class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(PAGE.encode())


if __name__ == "__main__":
    threading.Thread(target=publisher, daemon=True).start()
    print(f"open http://127.0.0.1:{PORT}/ (hub: {HUB})")
    http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Page).serve_forever()
