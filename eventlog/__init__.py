"""The signed, append-only log: envelope, typed bodies, clock, identity and the store.

The bottom floor of the house: it imports nothing of ``sync``, ``projections`` or
``node`` (docs/architecture.md, checked by import-linter on every test run).
"""
