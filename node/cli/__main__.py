"""``python -m node.cli``: the same as the ``potluck`` command."""

from __future__ import annotations

from node.cli import main

main()
