"""Network faults between a real client and a real Mosquitto, for the delivery tests.

`LossyLink` is a TCP relay on a free loopback port in front of the broker. `mute()` keeps
forwarding what the client sends but swallows what the broker answers, so PUBLISHes reach the
broker while their PUBACKs never come back; `cut()` then closes every connection. That is the
fault at-least-once delivery exists for: the broker has the message, the sender does not know.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from devtools.broker import free_port

log = logging.getLogger(__name__)


class LossyLink:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.muted = threading.Event()
        self.connections = 0
        self.swallowed = 0  # bytes from the broker that never reached the client
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, name="lossy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed:
                client.close()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 2)
            except OSError:  # the broker is away: the client sees a refused connection
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_broker: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_broker and self.muted.is_set():
                    self.swallowed += len(data)
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def mute(self) -> None:
        """From now on the client's packets reach the broker, the broker's answers are lost."""
        self.muted.set()

    def cut(self) -> None:
        """Close every connection (the client reconnects through a healthy link)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.muted.clear()

    def close(self) -> None:
        """Cut every connection and refuse new ones."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self.cut()
