#!/usr/bin/env python3
"""The chat example: rooms with history for new joiners, private messages
that wait for offline users and are acknowledged when read (with a read
receipt to the sender), typing indicators, and who is in the room
(Herald's presence events).

    cargo run --release -- serve --config examples/chat/herald.toml   # the hub
    python3 examples/chat/server.py      # then open http://127.0.0.1:8004/ in two browsers

Standard library only. Builds herald-client (clients/js) first if needed.
The backend signs each user's token (HS256, the secret in herald.toml) and
publishes for them with its API key after checking what they send: users
may read rooms and their own messages, and write only through it.
"""
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "..", "..", "clients", "js")
HUB = os.environ.get("HERALD_URL", "http://127.0.0.1:8080").rstrip("/")
PORT = int(os.environ.get("PORT", "8004"))
SECRET = os.environ.get("CHAT_SECRET", "chat-example-secret-change-me-0123456789").encode()
API_KEY = os.environ.get("CHAT_API_KEY", "chat-example-backend-key")
ROOMS = ["lobby", "dev", "random"]
USER = re.compile(r"[a-z][a-z0-9_]{0,19}")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(user):
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600,
                             "herald.subscribe": ["chat/rooms/*"]}).encode())
    signature = hmac.new(SECRET, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def verify(token):
    """The user of a token this backend minted, or None."""
    try:
        header, claims, signature = token.split(".")
        good = b64(hmac.new(SECRET, f"{header}.{claims}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(good, signature):
            return None
        body = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        return body["sub"] if body.get("exp", 0) > time.time() else None
    except (ValueError, KeyError):
        return None


def hub(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{HUB}{path}", data, method=method,
                                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = urllib.parse.urlparse(self.path)
        if path.path == "/members":
            room = urllib.parse.parse_qs(path.query).get("room", [""])[0]
            if room not in ROOMS or not self.user():
                return self.answer(400, {"error": "bad_request"})
            present = hub("GET", f"/v1/presence/chat/rooms/{room}")
            return self.answer(200, {"members": sorted(present["users"])})
        name = "/index.html" if path.path == "/" else path.path
        if name.startswith("/client/"):
            root, rel = os.path.join(CLIENT, "dist"), name[len("/client/"):]
        else:
            root, rel = HERE, name.lstrip("/")
        full = os.path.realpath(os.path.join(root, rel))
        if not full.startswith(os.path.realpath(root)) or not os.path.isfile(full) or not full.endswith((".html", ".js")):
            return self.send_error(404)
        body = open(full, "rb").read().replace(b"{{HUB}}", HUB.encode()).replace(b"{{ROOMS}}", json.dumps(ROOMS).encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/javascript" if full.endswith(".js") else "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == "/login":
            user = str(body.get("name", "")).strip().lower()
            if not USER.fullmatch(user):
                return self.answer(400, {"error": "bad_name", "message": "lowercase letters, digits, _; up to 20"})
            return self.answer(200, {"user": user, "token": mint(user)})
        user = self.user()
        if not user:
            return self.answer(401, {"error": "unauthorized"})
        room = body.get("room")
        text = str(body.get("text", ""))[:2000]
        now = int(time.time() * 1000)
        if self.path == "/send" and room in ROOMS and text:
            hub("POST", "/v1/publish", {"topic": f"chat/rooms/{room}", "event": "chat",
                                        "data": {"from": user, "text": text, "at": now}})
        elif self.path == "/typing" and room in ROOMS:
            # Live only (ttl 0): a late joiner does not see who typed.
            hub("POST", "/v1/publish", {"topic": f"chat/rooms/{room}", "event": "typing",
                                        "ttl": 0, "data": {"from": user}})
        elif self.path == "/dm" and USER.fullmatch(str(body.get("to", ""))) and text:
            # Waits for an offline user; stays pending until they acknowledge it.
            answer = hub("POST", "/v1/publish", {"to": {"users": [body["to"]]}, "event": "dm", "require_ack": True,
                                                 "data": {"from": user, "to": body["to"], "text": text, "at": now}})
            # The sender's other tabs and devices see it too.
            hub("POST", "/v1/publish", {"to": {"users": [user]}, "event": "dm-sent",
                                        "data": {"id": answer["id"], "to": body["to"], "text": text, "at": now}})
            return self.answer(200, {"id": answer["id"]})
        elif self.path == "/read" and USER.fullmatch(str(body.get("from", ""))) and body.get("id"):
            hub("POST", "/v1/publish", {"to": {"users": [body["from"]]}, "event": "receipt",
                                        "data": {"id": str(body["id"]), "by": user, "at": now}})
        else:
            return self.answer(400, {"error": "bad_request"})
        self.answer(200, {"ok": True})

    def user(self):
        auth = self.headers.get("Authorization", "")
        return verify(auth[7:]) if auth.startswith("Bearer ") else None

    def answer(self, status, body):
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away

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
    print(f"open http://127.0.0.1:{PORT}/ (hub: {HUB})", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
