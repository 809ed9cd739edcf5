"""A loopback TCP forwarder that a test can cut: in front of the shared OpenSearch, so a test
can make "OpenSearch" unreachable for one process without stopping the node others use.

Modes: `forward` (bytes both ways), `refuse` (nothing listens: connection refused), `blackhole`
(connections are accepted and never answered). Switching mode closes the connections open."""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, mode: str = "forward") -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.port = self._free_port()
        self.mode = "refuse"
        self.set_mode(mode)

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        assert mode in ("forward", "refuse", "blackhole"), mode
        with self._lock:
            for conn in self._connections:
                _close(conn)
            self._connections.clear()
            if mode == "refuse":
                self._stop_listening()
            elif self._listener is None:
                self._listen()
            self.mode = mode

    def close(self) -> None:
        self.set_mode("refuse")

    # -- internals ----------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), name="tcp-proxy", daemon=True)
        self._thread.start()

    def _stop_listening(self) -> None:
        if self._listener is None:
            return
        listener, self._listener = self._listener, None
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        except OSError:
            pass
        listener.close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the proxy's accept thread did not stop within 10 s"

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped listening
            with self._lock:
                if self.mode == "forward":
                    try:
                        upstream = socket.create_connection(self._target, timeout=10)
                    except OSError:
                        _close(client)
                        continue
                    self._connections += [client, upstream]
                    for source, sink in ((client, upstream), (upstream, client)):
                        threading.Thread(target=_pump, args=(source, sink), daemon=True).start()
                else:  # blackhole: hold the connection, never answer
                    self._connections.append(client)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
