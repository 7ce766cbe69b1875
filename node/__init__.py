"""The participant's node: events, clock, identity, store, app, cli."""
