"""A raw-socket WebSocket client for tests that need what real clients never send:
forged ``Host`` headers, invalid UTF-8, clients that never read."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class RawSocket:
    """One TCP connection; :meth:`handshake` upgrades it to a WebSocket."""

    def __init__(self, port: int, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the TCP window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def handshake(self, *headers: str, host: str | None = "") -> tuple[int, str]:
        """Send an upgrade request; return (HTTP status, response head and body).

        ``host=""`` sends the usual ``Host: 127.0.0.1:PORT``; ``None`` sends none.
        """
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET / HTTP/1.1"]
        if host is not None:
            lines.append(f"Host: {host or f'127.0.0.1:{self.port}'}")
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *headers,
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:  # the refusal's body follows its head
            try:
                while chunk := self.sock.recv(4096):
                    self.buffer += chunk
            except OSError:
                pass
            return status, (head + b"\r\n\r\n" + self.buffer).decode("latin-1")
        return status, head.decode("latin-1")

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """Send one masked frame (clients must mask)."""
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | opcode
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, 0x80 | size)
        elif size < 2**16:
            header = struct.pack("!BBH", first, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, message: Any) -> None:
        self.send_frame(TEXT, json.dumps(message).encode())

    def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the server."""
        first, second = self._read_exact(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read_exact(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read_exact(8))
        return first & 0x0F, self._read_exact(size)

    def read_json(self) -> dict[str, Any]:
        """The next text message (answering pings on the way)."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == TEXT:
                return json.loads(payload)
            if opcode == PING:
                self.send_frame(PONG, payload)
            elif opcode == CLOSE:
                raise ConnectionError(f"closed: {close_code(payload)}")

    def read_close(self) -> int | None:
        """Read until the server's close frame; return its close code."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == CLOSE:
                return close_code(payload)


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
