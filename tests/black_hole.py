"""Backends that are down, for shutdown and backend-down tests: a closed port and a black hole."""

from __future__ import annotations

import socket
import threading


def closed_port() -> int:
    """A local port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BlackHole:
    """Accepts every connection and never reads from it nor answers (a hung backend)."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted.append(conn)  # kept open, never read

    def close(self) -> None:
        self._server.close()
        for conn in self.accepted:
            conn.close()
