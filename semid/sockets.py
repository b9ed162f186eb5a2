"""The listening socket of `semid serve`, bound before the run loads (imports nothing heavy: a taken
port is told in the time Python starts, not after torch and the web server are imported)."""

from __future__ import annotations

import socket

from semid.errors import SemidError

BACKLOG = 2048  # connections queued while the server starts or is busy


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) (port 0: a free one), not yet listening; SemidError if
    taken. `semid serve` binds before it loads the run, so a taken port is told at once, and
    clients are refused, not kept waiting, until `serve` listens."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise SemidError(f"cannot listen on {host}:{port}: {e}; check --host") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise _taken(host, port, e) from None
    return sock


def listen(sock: socket.socket, host: str) -> None:
    """Listen on a bound ``sock``; SemidError if another server took its port meanwhile (two
    sockets that allow address reuse can bind one port; only the first to listen keeps it)."""
    try:
        sock.listen(BACKLOG)
    except OSError as e:
        port = sock.getsockname()[1]
        sock.close()
        raise _taken(host, port, e) from None


def _taken(host: str, port: int, error: OSError) -> SemidError:
    """The error of a port that cannot be had."""
    return SemidError(
        f"cannot listen on {host}:{port}: {error.strerror}; choose another --port or --host"
    )
