"""The HTTP/1.1 protocol layer: the request record and field rules, dates, the canonical
request path, precondition evaluation, and the connection (an ``asyncio.Protocol``).
Imports nothing of the layers above it."""
