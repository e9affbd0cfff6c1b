"""The WebSocket server and the daemon that wires it to the scheduler."""

from ttsd.server.server import Server

__all__ = ["Server"]
