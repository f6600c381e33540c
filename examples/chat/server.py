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
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from examplekit import Handler, hub, serve  # noqa: E402

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


def publish(event):
    """Publishes for a user, with the backend's API key."""
    return hub("POST", "/v1/publish", event, API_KEY)


class Page(Handler):
    folder = os.path.dirname(os.path.abspath(__file__))
    replacements = {"{{ROOMS}}": json.dumps(ROOMS)}

    def do_GET(self):
        path = urllib.parse.urlparse(self.path)
        if path.path == "/members":
            room = urllib.parse.parse_qs(path.query).get("room", [""])[0]
            if room not in ROOMS or not self.user():
                return self.answer(400, {"error": "bad_request"})
            present = hub("GET", f"/v1/presence/chat/rooms/{room}", key=API_KEY)
            return self.answer(200, {"members": sorted(present["users"])})
        self.serve_file(path.path)

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
            publish({"topic": f"chat/rooms/{room}", "event": "chat",
                                        "data": {"from": user, "text": text, "at": now}})
        elif self.path == "/typing" and room in ROOMS:
            # Live only (ttl 0): a late joiner does not see who typed.
            publish({"topic": f"chat/rooms/{room}", "event": "typing",
                                        "ttl": 0, "data": {"from": user}})
        elif self.path == "/dm" and USER.fullmatch(str(body.get("to", ""))) and text:
            # Waits for an offline user; stays pending until they acknowledge it.
            answer = publish({"to": {"users": [body["to"]]}, "event": "dm", "require_ack": True,
                                                 "data": {"from": user, "to": body["to"], "text": text, "at": now}})
            # The sender's other tabs and devices see it too.
            publish({"to": {"users": [user]}, "event": "dm-sent",
                                        "data": {"id": answer["id"], "to": body["to"], "text": text, "at": now}})
            return self.answer(200, {"id": answer["id"]})
        elif self.path == "/read" and USER.fullmatch(str(body.get("from", ""))) and body.get("id"):
            publish({"to": {"users": [body["from"]]}, "event": "receipt",
                                        "data": {"id": str(body["id"]), "by": user, "at": now}})
        else:
            return self.answer(400, {"error": "bad_request"})
        self.answer(200, {"ok": True})

    def user(self):
        auth = self.headers.get("Authorization", "")
        return verify(auth[7:]) if auth.startswith("Bearer ") else None


if __name__ == "__main__":
    serve(Page, PORT)
