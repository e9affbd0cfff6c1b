"""Event latency to many clients, measured with minimal raw WebSocket clients.

The clients are plain sockets read by one ``selectors`` loop, so that the time a
frame is seen is the time the kernel delivered it, give or take a few microseconds
per socket, and not the time a heavyweight client library got round to parsing it.
Client 0 sends ``speak``; every client (client 0 as the reply) gets ``queued``.
The latency of a client is its receive time of that ``queued`` minus the send time.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import struct
import time
from typing import Any


class RawClient:
    """A WebSocket client on a blocking-free socket that only splits frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET / HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            block = self.sock.recv(4096)
            if not block:
                raise ConnectionError("closed during the handshake")
            head += block
        status, self.buffer = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"handshake refused: {status[:80]!r}")
        self.sock.setblocking(False)
        self.inbox: list[tuple[float, dict[str, Any]]] = []

    def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if len(payload) < 126:
            header = struct.pack("!BB", 0x81, 0x80 | len(payload))
        else:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
        self.sock.setblocking(True)
        self.sock.sendall(header + mask + masked)
        self.sock.setblocking(False)

    def receive(self, now: float) -> None:
        """Read what is there; keep every complete text frame with ``now``."""
        try:
            while block := self.sock.recv(65536):
                self.buffer += block
                if len(block) < 65536:
                    break
        except BlockingIOError:
            pass
        while len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            start = 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                (length,) = struct.unpack("!H", self.buffer[2:4])
                start = 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                (length,) = struct.unpack("!Q", self.buffer[2:10])
                start = 10
            if len(self.buffer) < start + length:
                return
            opcode = self.buffer[0] & 0x0F
            payload = self.buffer[start : start + length]
            self.buffer = self.buffer[start + length :]
            if opcode == 1:
                self.inbox.append((now, json.loads(payload)))

    def close(self) -> None:
        self.sock.close()


def measure(port: int, clients: int, reps: int, text: str = "Hi.") -> dict[str, list[float]]:
    """Broadcast latency of ``queued`` to ``clients`` connections, ``reps`` times.

    Returns ``{"broadcast": [...], "queued": [...]}`` in seconds: every client's
    latency for every rep, and the sender's speak->queued round trip.
    """
    selector = selectors.DefaultSelector()
    conns = [RawClient(port) for _ in range(clients)]
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    result: dict[str, list[float]] = {"broadcast": [], "queued": []}
    try:
        _drain(selector, 0.3)
        for rep in range(reps):
            for conn in conns:
                conn.inbox.clear()
            sent = time.monotonic()
            conns[0].send({"type": "speak", "id": rep + 1, "text": text})
            waiting = set(range(clients))
            seen: dict[int, float] = {}
            deadline = sent + 10
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(0.5):
                    key.data.receive(time.monotonic())
                for index in list(waiting):
                    for at, message in conns[index].inbox:
                        if message.get("type") == "queued":
                            seen[index] = at - sent
                            waiting.discard(index)
                            break
            if waiting:
                raise TimeoutError(f"{len(waiting)} clients never got the queued event")
            result["broadcast"] += seen.values()
            result["queued"].append(seen[0])
            conns[0].send({"type": "abort_all", "id": 10_000 + rep})
            _drain(selector, 0.4)
    finally:
        for conn in conns:
            selector.unregister(conn.sock)
            conn.close()
    return result


def _drain(selector: selectors.BaseSelector, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            key.data.receive(time.monotonic())
