"""What every example backend shares (standard library only): the hub's
address, requests to it, serving the example's page and herald-client, JSON
answers, and the start-up line the tests wait for.

An example imports it with its own folder's parent on `sys.path`.
"""
import json
import os
import subprocess
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(EXAMPLES, "..", "clients", "js")
HUB = os.environ.get("HERALD_URL", "http://127.0.0.1:8080").rstrip("/")


def hub(method, path, body=None, key=None, content_type="application/json"):
    """One request to the hub; its JSON answer (None when empty)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(f"{HUB}{path}", data, headers, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def publish(event, key=None):
    """Publishes one event (or a batch, a list); returns the hub's answer."""
    return hub("POST", "/v1/publish", event, key)


def build_client():
    """Builds herald-client (clients/js/dist) if it is not built yet."""
    if os.path.exists(os.path.join(CLIENT, "dist", "index.js")):
        return
    print("building herald-client (clients/js) ...")
    if not os.path.isdir(os.path.join(CLIENT, "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True)
    subprocess.run(["npm", "run", "build"], cwd=CLIENT, check=True)


class Handler(BaseHTTPRequestHandler):
    """Serves the example's folder (`/` is index.html) and herald-client
    under `/client/`, with `{{HUB}}` and the `replacements` filled in. Only
    pages and scripts are served (never a backend or its configuration)."""

    folder = EXAMPLES
    replacements = {}

    def do_GET(self):
        self.serve_file(self.path.split("?")[0])

    def serve_file(self, path):
        if path == "/":
            path = "/index.html"
        if path.startswith("/client/"):
            root, rel = os.path.join(CLIENT, "dist"), path[len("/client/"):]
        else:
            root, rel = self.folder, path.lstrip("/")
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(os.path.realpath(root)) or not os.path.isfile(full) or not full.endswith((".html", ".js")):
            return self.send_error(404)
        body = open(full, "rb").read().replace(b"{{HUB}}", HUB.encode())
        for name, value in self.replacements.items():
            body = body.replace(name.encode(), value.encode())
        self.send_response(200)
        kind = "text/javascript" if full.endswith(".js") else "text/html; charset=utf-8"
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body)

    def answer(self, status, body, close=False):
        """A JSON answer; `close` when the request's body was not read."""
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away

    def log_message(self, *args):
        pass


def serve(handler, port, client=True):
    """Builds the client if the page needs it, says where to open the page
    (the tests wait for this line), and serves until interrupted."""
    if client:
        build_client()
    print(f"open http://127.0.0.1:{port}/ (hub: {HUB})", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
