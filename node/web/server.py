"""Serving the web UI: a uvicorn server to run inside the node's event loop.

Usage (what ``potluck serve --ui HOST:PORT`` does)::

    server = create_server(node, "127.0.0.1", 7718)          # loopback: no token
    server = create_server(node, "0.0.0.0", 7718, token=new_token())  # LAN
    server = create_server(node, peer_vectors=vectors)  # + "shared with N peers"
    await server.serve()          # returns after server.should_exit = True

The server does not touch signal handlers: the caller owns Ctrl-C and SIGTERM and stops
it by setting ``server.should_exit = True``.

Binding to anything but loopback without a token raises ``UsageError``: the page acts
with this node's key (docs/web.md §exposing).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
from collections.abc import Generator

import uvicorn

from eventlog.errors import UsageError
from node.app import Node
from node.web.app import Web, create_app
from node.web.feed import PeerVectors

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7718
GRACE_SECONDS = 3.0


def new_token() -> str:
    """A fresh access token: 32 random bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' -> (host, port); IPv6 as '[::1]:7718'."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"'{text}' is not HOST:PORT, like 127.0.0.1:{DEFAULT_PORT}") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is not between 0 and 65535")
    return host, port


class UiServer(uvicorn.Server):
    """uvicorn's server that first ends the open live streams when it shuts down.

    Without this, uvicorn would wait for every open page's /events stream to finish,
    which they never do by themselves.
    """

    def __init__(self, config: uvicorn.Config, web: Web) -> None:
        super().__init__(config)
        self.web = web
        self.feed = web.feed

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.web.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        """Leave signals alone: the node that embeds the server owns Ctrl-C and SIGTERM.

        uvicorn would otherwise replace their handlers while it serves; the node stops
        the UI by setting ``should_exit``.
        """
        yield


def create_server(
    node: Node,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    token: str | None = None,
    peer_vectors: PeerVectors | None = None,
) -> UiServer:
    """A server for ``node``'s web UI on ``host:port``; run it with ``await .serve()``.

    ``peer_vectors``: see ``create_app`` (what connected peers have, for "shared with
    N peers"). Raises UsageError when ``host`` is not loopback and there is no ``token``.
    """
    if not is_loopback(host) and not token:
        raise UsageError(
            f"showing the web page on {host} lets other devices act as this "
            f"member: it needs an access token (see docs/web.md)"
        )
    app = create_app(node, token=token, peer_vectors=peer_vectors)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(GRACE_SECONDS),
        lifespan="on",
    )
    return UiServer(config, app.state.web)
