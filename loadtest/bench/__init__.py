"""Side-by-side benchmarks of the reelcdn cache node against nginx.

Why a package of its own: the benchmarks start real servers (an origin, nginx, the node) as
subprocesses and drive them with wrk or a crowd client, so they share process management, load
parsing and reporting code that has nothing to do with the player-emulation harness in
``reelcdn.loadtest``.

Entry points:

- ``python -m reelcdn.loadtest.bench.hit``: cache HIT throughput, node vs nginx ``proxy_cache``.
- ``python -m reelcdn.loadtest.bench.crowd``: 500 concurrent requests for one cold object
  (request coalescing), node vs nginx ``proxy_cache_lock``.
- ``python -m reelcdn.loadtest.bench.origin --port N``: the origin those benchmarks fetch from.
- ``python -m reelcdn.loadtest.bench.crowdclient``: the crowd, run by ``crowd`` as a process.
"""
