"""A lockgate process with its management API on a free port, and a tiny urllib client."""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from lockgate_harness import LockgateProcess

MGMT_LINE = re.compile(r"management API serving.*http=([0-9.]+):([0-9]+)")

BASE_CONFIG = """
[management]
listen = "127.0.0.1:0"
[metrics]
enabled = false
"""

USERS = """
[[users]]
name = "guest"
password = "guest"
loopback_only = true
tags = ["administrator"]
[[users]]
name = "watcher"
password = "w"
tags = ["monitoring"]
[[users]]
name = "app"
password = "a"
"""


def start(extra: str = "", users: str = USERS) -> LockgateProcess:
    proc = LockgateProcess(config=BASE_CONFIG + extra + users, log_level="info")
    line = proc.wait_for_log(r"management API serving", timeout=10)
    m = MGMT_LINE.search(line)
    assert m, line
    proc.http = f"http://{m.group(1)}:{m.group(2)}"
    return proc


def q(name: str) -> str:
    """One path segment, percent-encoded as RabbitMQ clients do ("/" -> %2F)."""
    return urllib.parse.quote(name, safe="")


class Api:
    def __init__(self, base: str, user: str = "guest", password: str = "guest"):
        self.base = base
        self.auth: str | None = None
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.auth = f"Basic {token}"

    def request(self, method: str, path: str, body: Any = None,
                headers: dict | None = None) -> tuple[int, Any, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.auth:
            req.add_header("authorization", self.auth)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                status, hdrs = resp.status, dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw = e.read()
            status, hdrs = e.code, dict(e.headers)
        text = raw.decode("utf-8", "replace")
        try:
            value = json.loads(text) if text else None
        except ValueError:
            value = text
        return status, value, hdrs

    def send(self, method: str, path: str, data: bytes, content_type: str | None,
             headers: dict | None = None) -> tuple[int, Any]:
        """`data` as it is, with `content_type` or with no content-type header at all (urllib
        would add a form one), and any other `headers`."""
        url = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        headers = dict(headers or {})
        if self.auth:
            headers["authorization"] = self.auth
        if content_type is not None:
            headers["content-type"] = content_type
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            status = resp.status
        finally:
            conn.close()
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def get(self, path: str) -> Any:
        status, value, _ = self.request("GET", path)
        assert status == 200, (path, status, value)
        return value

    def put(self, path: str, body: Any = None) -> int:
        return self.request("PUT", path, body if body is not None else {})[0]

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        status, value, _ = self.request("POST", path, body)
        return status, value

    def delete(self, path: str, headers: dict | None = None) -> int:
        return self.request("DELETE", path, headers=headers)[0]
