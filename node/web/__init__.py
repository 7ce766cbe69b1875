"""The local web UI: board, inventory, roster, people and sync status, in a browser.

``create_app(node, token=None)`` is the Starlette app (node/web/app.py);
``create_server(node, host, port, token=None)`` wraps it in a uvicorn server for the
node's event loop (node/web/server.py). Architecture, security and languages:
docs/web.md; the choice of stack: docs/decisions/0005-web-stack.md.
"""

from __future__ import annotations

from node.web.app import create_app
from node.web.server import DEFAULT_HOST, DEFAULT_PORT, create_server, new_token

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "create_app", "create_server", "new_token"]
