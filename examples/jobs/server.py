#!/usr/bin/env python3
"""The job queue example: jobs are retained state in Herald (topic `queue`,
one key per job), so every tab of every user sees the same queue. A new tab
gets a snapshot, then only what changed (merge patches); tabs of one
browser share one connection. Actions are plain htmx posts to this backend.

    # the hub, in another terminal; the page's origin may read its streams:
    cargo run --release -- serve --set 'cors.allowed_origins=["http://127.0.0.1:8002"]'
    python3 examples/jobs/server.py            # then open http://127.0.0.1:8002/

Standard library only. Builds herald-client (clients/js) first if needed.
HERALD_URL (default http://127.0.0.1:8080) names the hub.
"""
import os
import random
import re
import sys
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examplekit import Handler, hub, serve  # noqa: E402

PORT = int(os.environ.get("PORT", "8002"))
STEP_SECS = float(os.environ.get("STEP_SECS", "0.3"))
RUNNING_AT_ONCE = 2

lock = threading.Lock()
jobs = {}  # id -> {"name", "status", "progress", "created"}


def state(method, key, value):
    """Writes one job to the hub: PUT a whole value, PATCH a merge patch."""
    kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
    hub(method, f"/v1/state/queue/{key}", value, content_type=kind)


def change(job_id, **fields):
    with lock:
        jobs[job_id].update(fields)
    state("PATCH", job_id, fields)


def worker():
    """Runs at most two jobs at a time, a few percent per step."""
    while True:
        time.sleep(STEP_SECS)
        with lock:
            running = [j for j, v in jobs.items() if v["status"] == "running"]
            queued = sorted((v["created"], j) for j, v in jobs.items() if v["status"] == "queued")
        for _, j in queued[: max(0, RUNNING_AT_ONCE - len(running))]:
            change(j, status="running")
            running.append(j)
        for j in running:
            with lock:
                job = dict(jobs[j])
            if job["status"] != "running":
                continue
            if job["name"].lower().startswith("fail") and job["progress"] >= 40:
                change(j, status="failed", error="the job asked to fail")
                continue
            progress = min(100, job["progress"] + random.randint(5, 15))
            change(j, progress=progress, status="done" if progress == 100 else "running")


class Page(Handler):
    folder = os.path.dirname(os.path.abspath(__file__))

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        if self.path == "/jobs":
            name = (form.get("name") or [""])[0].strip()[:80]
            if not name:
                return self.answer(400, "a job needs a name")
            job_id = uuid.uuid4().hex[:8]
            job = {"name": name, "status": "queued", "progress": 0, "created": time.time()}
            with lock:
                jobs[job_id] = job
            state("PUT", job_id, job)
            return self.answer(204)
        m = re.fullmatch(r"/jobs/([0-9a-f]{8})/cancel", self.path)
        if m and m.group(1) in jobs:
            with lock:
                active = jobs[m.group(1)]["status"] in ("queued", "running")
            if active:
                change(m.group(1), status="cancelled")
            return self.answer(204)
        self.answer(404, "no such job")

    def answer(self, status, text=""):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        self.wfile.write(text.encode())


if __name__ == "__main__":
    threading.Thread(target=worker, daemon=True).start()
    serve(Page, PORT)
