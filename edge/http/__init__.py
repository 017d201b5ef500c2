"""The HTTP/1.1 protocol layer: field rules, dates, precondition evaluation, and the
connection (an ``asyncio.Protocol``). The request record and the canonical request path are the
request readers' (``reelcdn.extensions.message``, ``reelcdn.extensions.target``). Imports
nothing of the layers above it."""
