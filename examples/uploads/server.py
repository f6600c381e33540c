#!/usr/bin/env python3
"""The upload progress example: the browser sends files with fetch (which
reports no upload progress), the backend reports its own progress per file
(bytes received, then processing) on Herald, one topic per file under the
page's session: `uploads/{session}/{file}`. Several uploads at once,
cancellation (from the page, while receiving or processing), errors.

    # the hub, in another terminal; the page's origin may read its streams:
    cargo run --release -- serve --set 'cors.allowed_origins=["http://127.0.0.1:8003"]'
    python3 examples/uploads/server.py         # then open http://127.0.0.1:8003/

Standard library only. Builds herald-client (clients/js) first if needed.
With auth on, the session would be the user (`sub`) and the token would
grant `uploads/{sub}/**`.
"""
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examplekit import Handler, publish, serve  # noqa: E402

PORT = int(os.environ.get("PORT", "8003"))
MAX_BYTES = 5 * 1024 * 1024
PROCESS_SECS = float(os.environ.get("PROCESS_SECS", "2"))
NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")

cancelled = set()  # (session, file)
lock = threading.Lock()


def progress(session, file, **data):
    """One progress event. The coalesce_key keeps only the newest waiting for
    a slow subscriber; the final state (done, error, cancelled) has none,
    so it is never replaced."""
    final = data["stage"] in ("done", "error", "cancelled")
    event = {"topic": f"uploads/{session}/{file}", "event": "progress", "data": {"file": file, **data},
             "ttl": 600}
    if not final:
        event["coalesce_key"] = f"{session}/{file}"
    publish(event)


def is_cancelled(session, file):
    with lock:
        return (session, file) in cancelled


class Page(Handler):
    folder = os.path.dirname(os.path.abspath(__file__))

    def do_POST(self):
        m = re.fullmatch(r"/uploads/([^/]+)/([^/]+)(/cancel)?", self.path.split("?")[0])
        if not m or not NAME.fullmatch(m.group(1)) or not NAME.fullmatch(m.group(2)):
            return self.answer(404, {"error": "not_found"})
        session, file = m.group(1), m.group(2)
        if m.group(3):
            with lock:
                cancelled.add((session, file))
            return self.answer(202, {"cancelling": file})
        self.receive(session, file)

    def receive(self, session, file):
        name = self.headers.get("X-File-Name", file)
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BYTES:
            progress(session, file, name=name, stage="error", error=f"{size} bytes is over the {MAX_BYTES} byte limit")
            return self.answer(413, {"error": "too_large"})
        if name.lower().endswith(".exe"):
            progress(session, file, name=name, stage="error", error="executables are not accepted")
            return self.answer(415, {"error": "refused_type"})
        got = 0
        last = 0.0
        while got < size:
            chunk = self.rfile.read(min(64 * 1024, size - got))
            if not chunk:
                progress(session, file, name=name, stage="cancelled", pct=got * 100 // max(size, 1))
                return
            got += len(chunk)
            if time.monotonic() - last > 0.05 or got == size:
                last = time.monotonic()
                progress(session, file, name=name, stage="receiving", pct=got * 100 // max(size, 1))
        # Processing (a scan, a thumbnail...) reports progress too, and can
        # be cancelled from the page.
        steps = 20
        for i in range(1, steps + 1):
            if is_cancelled(session, file):
                progress(session, file, name=name, stage="cancelled", pct=(i - 1) * 100 // steps)
                return self.answer(200, {"cancelled": file})
            time.sleep(PROCESS_SECS / steps)
            progress(session, file, name=name, stage="processing", pct=i * 100 // steps)
        progress(session, file, name=name, stage="done", pct=100, bytes=got)
        self.answer(200, {"stored": file, "bytes": got})

    def answer(self, status, body):
        # A refused upload's body was not read: its connection cannot carry
        # another request.
        super().answer(status, body, close=status >= 400)


if __name__ == "__main__":
    serve(Page, PORT)
