"""Side-by-side benchmarks of the reelcdn cache node against nginx.

Why a package of its own: the benchmarks start real servers (an origin, nginx, the node) as
subprocesses and drive them with wrk, so they share process management, wrk parsing and
reporting code that has nothing to do with the player-emulation harness in ``reelcdn.loadtest``.

Entry points:

- ``python -m reelcdn.loadtest.bench.hit``: cache HIT throughput, node vs nginx ``proxy_cache``.
- ``python -m reelcdn.loadtest.bench.origin --port N``: the origin those benchmarks fetch from.
"""
