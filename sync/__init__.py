"""How logs meet: sans-I/O protocol, websocket transport, peer manager."""
