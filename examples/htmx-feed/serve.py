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
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examplekit import HUB, Handler, publish, serve  # noqa: E402

PORT = int(os.environ.get("PORT", "8000"))


def fragment(event, html_text):
    publish({"topic": "feed", "event": event, "data": html_text})


def publisher():
    n = 0
    while True:
        n += 1
        now = time.strftime("%H:%M:%S")
        try:
            fragment("item", f"<li>\n  <b>Item {n}</b> at {html.escape(now)}\n</li>")
            fragment("status", f"{n} items so far")
        except OSError as e:
            print(f"publish failed ({e}); is the hub running at {HUB}?")
        time.sleep(2)


class Page(Handler):
    folder = os.path.dirname(os.path.abspath(__file__))


if __name__ == "__main__":
    threading.Thread(target=publisher, daemon=True).start()
    serve(Page, PORT, client=False)
