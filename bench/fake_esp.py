"""A fake email provider on loopback that speaks Mailgun's and Postmark's real send APIs.

Threaded, HTTP/1.1 keep-alive, Nagle off, so a client's reused connection behaves as it
would against the real thing. It records what it received and can be told to fail.

    Mailgun:  POST /v3/<domain>/messages   (form-encoded; `recipient-variables` for batch)
    Postmark: POST /email, POST /email/batch   (JSON)

Control (JSON over HTTP, or call the methods on `server.state` in-process):

    POST /_control {"fail_next": 2, "status": 503}   next 2 sends answer 503
    POST /_control {"fail_next": 1, "status": 429, "retry_after": 2}   … with Retry-After
    POST /_control {"fail_always": 500}              every send fails until reset
                   {"fail_always": 401, "message": "Invalid private key"}   (its body)
    POST /_control {"timeout_next": 1, "seconds": 3} next send stalls before answering
    POST /_control {"deliver_late_next": 1, "seconds": 3}   next send is delivered, and
                                                     answered only that late
    POST /_control {"reject": ["bad@example.com"]}   these recipients are refused (400)
    POST /_control {"latency_ms": 150, "jitter_ms": 50}   every send answers after
                                                     150 ± 50 ms (uniform), like a real API
    POST /_control {"max_in_flight": 40}             past 40 sends in flight, answer 429
                                                     with Retry-After: 1, as providers do
    POST /_control {"fail_after": 1500, "status": 500}   a provider dying mid-blast:
                                                     once 1500 recipients were accepted,
                                                     every send answers 500 until reset
                   {"fail_after": 1500, "timeout": 3}   … every send stalls 3 s, then 504
    POST /_control {"fail_at": 1767225600.0, "status": 503}   the same from that moment
                                                     (time.time()) on
    POST /_control {"reset": true}                   forget failures and recordings (the
                                                     latency and the cap stay)
    GET  /_stats                                     {"requests": …, "recipients": …}
    GET  /_messages                                  every recipient's message, expanded
    GET  /_recipients                                {recipient: messages received}

Run alone: `python bench/fake_esp.py --port 8025 --record recipients --latency-ms 150
--jitter-ms 50 --max-in-flight 80`. Two of them on two ports are a primary and a failover
provider (tests/campaigns/test_failover.py, bench/blast.py --failover): each fails alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

_RECIPIENT_VAR = re.compile(r"%recipient\.([^%]+)%")


class State:
    """What the server saw, and what it has been told to do. Thread-safe."""

    def __init__(
        self,
        record: str = "full",
        *,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        max_in_flight: int = 0,
    ):
        self.lock = threading.Lock()
        self.record = record  # full | recipients | count
        # Seconds every send takes to answer (uniform in latency ± jitter), and the most
        # sends the provider takes at once (0: no cap); reset() keeps them.
        self.latency = latency_ms / 1000
        self.jitter = jitter_ms / 1000
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.peak_in_flight = 0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests = 0
            self.recipient_total = 0
            self.recipients: Counter[str] = Counter()
            self.raw: list[tuple[str, dict]] = []  # (api, fields), for `full`
            self.fail_next = 0
            self.fail_status = 503
            self.fail_always = 0
            self.timeout_next = 0
            self.timeout_seconds = 0.0
            self.reject: set[str] = set()
            self.failures_served = 0
            self.retry_after: str | None = None
            self.fail_message = ""
            self.deliver_late_next = 0
            self.deliver_late_seconds = 0.0
            # The provider dies: after this many recipients accepted, or from this time.
            self.fail_after: int | None = None
            self.fail_at: float | None = None
            self.dying_status = 503
            self.dying_timeout = 0.0
            # (time.time() it arrived, status answered) for every send request.
            self.log: list[tuple[float, int]] = []
            self.over_capacity = 0  # 429s answered for too many sends in flight
            self.peak_in_flight = self.in_flight

    def control(self, command: dict) -> None:
        if command.get("reset"):
            self.reset()
        with self.lock:
            if "fail_next" in command:
                self.fail_next = int(command["fail_next"])
                self.fail_status = int(command.get("status", 503))
            if "fail_next" in command or "fail_always" in command:
                retry_after = command.get("retry_after")
                self.retry_after = None if retry_after is None else str(retry_after)
                self.fail_message = str(command.get("message", ""))
            if "fail_always" in command:
                self.fail_always = int(command["fail_always"])
            if "deliver_late_next" in command:
                self.deliver_late_next = int(command["deliver_late_next"])
                self.deliver_late_seconds = float(command.get("seconds", 5))
            if "fail_after" in command or "fail_at" in command:
                after, at = command.get("fail_after"), command.get("fail_at")
                self.fail_after = None if after is None else int(after)
                self.fail_at = None if at is None else float(at)
                self.dying_status = int(command.get("status", 503))
                self.dying_timeout = float(command.get("timeout", 0))
                self.fail_message = str(command.get("message", ""))
            if "timeout_next" in command:
                self.timeout_next = int(command["timeout_next"])
                self.timeout_seconds = float(command.get("seconds", 5))
            if "reject" in command:
                self.reject = {e.lower() for e in command["reject"]}
            if "latency_ms" in command:
                self.latency = float(command["latency_ms"]) / 1000
                self.jitter = float(command.get("jitter_ms", 0)) / 1000
            if "max_in_flight" in command:
                self.max_in_flight = int(command["max_in_flight"])

    def enter(self) -> bool:
        """A send arrives: False if it is one too many in flight (answer 429)."""
        with self.lock:
            if self.max_in_flight and self.in_flight >= self.max_in_flight:
                self.over_capacity += 1
                return False
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return True

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def answer_delay(self) -> float:
        """Seconds this send takes to answer: the latency, jittered uniformly."""
        if not self.latency and not self.jitter:
            return 0.0
        return max(0.0, self.latency + random.uniform(-self.jitter, self.jitter))

    def take_fault(self) -> tuple[int, float]:
        """(status to fail with or 0, seconds to stall) for the request now arriving."""
        with self.lock:
            if self._dead():
                self.failures_served += 1
                if self.dying_timeout:
                    return 0, self.dying_timeout  # stalls, then 504
                return self.dying_status, 0.0
            stall = 0.0
            if self.timeout_next > 0:
                self.timeout_next -= 1
                stall = self.timeout_seconds
            if self.fail_always:
                self.failures_served += 1
                return self.fail_always, stall
            if self.fail_next > 0:
                self.fail_next -= 1
                self.failures_served += 1
                return self.fail_status, stall
            return 0, stall

    def _dead(self) -> bool:
        """Has the provider died (fail_after / fail_at)? Called with the lock held."""
        if self.fail_after is not None and self.recipient_total >= self.fail_after:
            return True
        return self.fail_at is not None and time.time() >= self.fail_at

    def take_late_delivery(self) -> float:
        """Seconds to stall after delivering the request now arriving (0: answer at once)."""
        with self.lock:
            if self.deliver_late_next > 0:
                self.deliver_late_next -= 1
                return self.deliver_late_seconds
            return 0.0

    def logged(self, status: int) -> None:
        with self.lock:
            self.log.append((time.time(), status))

    def accept(self, api: str, fields: dict, to: list[str]) -> None:
        with self.lock:
            self.requests += 1
            self.recipient_total += len(to)
            if self.record in ("full", "recipients"):
                self.recipients.update(addr.lower() for addr in to)
            if self.record == "full":
                self.raw.append((api, fields))

    def stats(self) -> dict:
        with self.lock:
            return {
                "requests": self.requests,
                "recipients": self.recipient_total,
                "unique_recipients": len(self.recipients),
                "duplicates": sum(n - 1 for n in self.recipients.values() if n > 1),
                "failures_served": self.failures_served,
                "over_capacity": self.over_capacity,
                "peak_in_flight": self.peak_in_flight,
            }

    def messages(self) -> list[dict]:
        """Every recipient's message as the provider would deliver it."""
        with self.lock:
            raw = list(self.raw)
        out = []
        for api, fields in raw:
            out.extend(_expand_mailgun(fields) if api == "mailgun" else [fields])
        return out


def _address(value: str) -> str:
    match = re.search(r"<([^>]+)>", value)
    return (match.group(1) if match else value).strip().lower()


def _expand_mailgun(fields: dict) -> list[dict]:
    variables = json.loads(fields.get("recipient-variables", ["{}"])[0] or "{}")
    out = []
    for to in fields.get("to", []):
        email = _address(to)
        mine = variables.get(email, {})

        def sub(text: str, mine=mine) -> str:
            return _RECIPIENT_VAR.sub(lambda m: str(mine.get(m.group(1), "")), text)

        headers = {
            key[2:]: sub(values[0]) for key, values in fields.items() if key.startswith("h:")
        }
        out.append(
            {
                "to": email,
                "from": fields.get("from", [""])[0],
                "subject": sub(fields.get("subject", [""])[0]),
                "text": sub(fields.get("text", [""])[0]),
                "html": sub(fields.get("html", [""])[0]),
                "headers": headers,
                # Anymail's metadata (`v:` fields), which Mailgun echoes in its webhooks.
                "metadata": {
                    key[2:]: sub(values[0])
                    for key, values in fields.items()
                    if key.startswith("v:")
                },
                "message_id": fields["_message_id"],
            }
        )
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers do
    server_version = "FakeESP/1.0"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        pass

    def _reply(self, status: int, payload, headers: dict | None = None) -> None:
        late, self._late = getattr(self, "_late", 0.0), 0.0
        if late:
            time.sleep(late)
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    @property
    def state(self) -> State:
        return self.server.state

    def do_GET(self):
        if self.path == "/_stats":
            self._reply(200, self.state.stats())
        elif self.path == "/_messages":
            self._reply(200, self.state.messages())
        elif self.path == "/_recipients":
            with self.state.lock:
                counts = dict(self.state.recipients)
            self._reply(200, counts)
        else:
            self._reply(404, {"message": "not found"})

    def do_POST(self):
        body = self._body()
        if self.path == "/_control":
            self.state.control(json.loads(body or b"{}"))
            self._reply(200, {"ok": True})
            return
        self._body_read = body
        if not self.state.enter():
            self.state.logged(429)
            self._reply(429, {"message": "Too many requests in flight"}, {"Retry-After": "1"})
            return
        try:
            # The provider's own work takes this long, whatever it answers.
            delay = self.state.answer_delay()
            if delay:
                time.sleep(delay)
            self._send()
        finally:
            self.state.leave()

    def _send(self):
        body = self._body_read
        status, stall = self.state.take_fault()
        if stall:
            # The client has given up by now; answer late and record nothing, as a
            # provider that timed out before queueing the message would.
            time.sleep(stall)
            status = status or 504
        if status:
            self.state.logged(status)
            with self.state.lock:
                retry_after, message = self.state.retry_after, self.state.fail_message
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            self._reply(status, {"message": message or f"Injected failure {status}"}, headers)
            return
        self.state.logged(200)
        late = self.state.take_late_delivery()
        if late:
            # Delivered, but the answer comes after the client gave up: the send it
            # retries is a real duplicate.
            self._late = late
        match = re.fullmatch(r"/v3/([^/]+)/messages", self.path)
        if match:
            self._mailgun(match.group(1), body)
        elif self.path in ("/email", "/email/batch"):
            self._postmark(body, batch=self.path.endswith("batch"))
        else:
            self._reply(404, {"message": "not found"})

    def _mailgun(self, domain: str, body: bytes) -> None:
        fields = parse_qs(body.decode(), keep_blank_values=True)
        to = [_address(addr) for addr in fields.get("to", [])]
        if not to:
            self._reply(400, {"message": "'to' parameter is missing"})
            return
        refused = [addr for addr in to if addr in self.state.reject]
        if refused:
            # Mailgun refuses the whole call when any address is bad.
            self._reply(400, {"message": f"'to' parameter is not a valid address: {refused[0]}"})
            return
        message_id = f"<{uuid.uuid4().hex}@{domain}>"
        fields["_message_id"] = message_id
        self.state.accept("mailgun", fields, to)
        self._reply(200, {"id": message_id, "message": "Queued. Thank you."})

    def _postmark(self, body: bytes, *, batch: bool) -> None:
        payload = json.loads(body or b"{}")
        answers = []
        for message in payload if batch else [payload]:
            to = _address(message.get("To", ""))
            if to in self.state.reject:
                answers.append({"ErrorCode": 406, "Message": "Inactive recipient", "To": to})
                continue
            message_id = str(uuid.uuid4())
            headers = {h["Name"]: h["Value"] for h in message.get("Headers", [])}
            self.state.accept(
                "postmark",
                {
                    "to": to,
                    "from": message.get("From", ""),
                    "subject": message.get("Subject", ""),
                    "text": message.get("TextBody", ""),
                    "html": message.get("HtmlBody", ""),
                    "headers": headers,
                    "metadata": message.get("Metadata", {}),
                    "message_id": message_id,
                },
                [to],
            )
            answers.append({"ErrorCode": 0, "Message": "OK", "MessageID": message_id, "To": to})
        if batch:
            self._reply(200, answers)
        elif answers[0]["ErrorCode"]:
            self._reply(422, answers[0])
        else:
            self._reply(200, answers[0])


class FakeESP(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A client that was killed (the fault test SIGKILLs workers) resets its socket;
        # that is the test working, not the server failing.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self, port: int = 0, *, record: str = "full", **behaviour):
        super().__init__(("127.0.0.1", port), Handler)
        self.state = State(record, **behaviour)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeESP:
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--record", choices=["full", "recipients", "count"], default="full")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="answer every send after")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="± this, uniformly")
    parser.add_argument(
        "--max-in-flight", type=int, default=0, help="429 past this many sends at once (0: none)"
    )
    args = parser.parse_args()
    server = FakeESP(
        args.port,
        record=args.record,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        max_in_flight=args.max_in_flight,
    )
    print(
        f"fake ESP on {server.url} (record={args.record}, latency {args.latency_ms:g}"
        f"±{args.jitter_ms:g} ms, max in flight {args.max_in_flight or 'unlimited'})",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
