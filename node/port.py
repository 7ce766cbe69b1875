"""Finding a free port, as notebook servers do (issue 19, item 11): a second node on the
same machine takes the next free port instead of crashing on "address already in use",
and says which it took."""

from __future__ import annotations

import errno
import socket

from eventlog.errors import UsageError

TRIES = 20
"""Ports tried from the asked one up: enough for a household of nodes on one machine."""


def bind(host: str, port: int, *, tries: int = TRIES) -> socket.socket:
    """A socket bound to ``host:port``, or to the first free port of the ``tries`` ports
    from ``port`` up (port 0: any the system gives). Other errors, and no free port,
    are one ``UsageError`` that says what to do."""
    last: OSError | None = None
    for candidate in range(port, port + tries) if port else (0,):
        if candidate > 65535:
            break
        try:
            return _bound(host, candidate)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise UsageError(
                    f"cannot listen on {host}:{candidate}: {exc.strerror or exc}"
                ) from None
            last = exc
    taken = f"port {port} is" if tries == 1 else f"ports {port} to {port + tries - 1} are"
    raise UsageError(
        f"{taken} taken on {host} ({last.strerror if last else 'in use'}): is another "
        f"'potluck serve' running? Give a free port, like {host}:{port + tries + 10}"
    )


def first_free(host: str, port: int, *, tries: int = TRIES) -> int:
    """The port ``bind`` would take, released again for the caller's own server."""
    with bind(host, port, tries=tries) as sock:
        bound: int = sock.getsockname()[1]
        return bound


def _bound(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(100)  # else a second bind with SO_REUSEADDR would still succeed
    except OSError:
        sock.close()
        raise
    return sock
