"""Side-by-side benchmarks of the reelcdn cache node against nginx.

Why a package of its own: the benchmarks start real servers (an origin, nginx, the node) as
subprocesses and drive them with wrk or a crowd client, so they share process management, load
parsing and reporting code that has nothing to do with the player-emulation harness in
``reelcdn.loadtest``.

Entry points:

- ``python -m reelcdn.loadtest.bench.hit``: cache HIT throughput, node vs nginx ``proxy_cache``.
- ``python -m reelcdn.loadtest.bench.ranges``: Range HITs at any offset (random offsets and
  lengths, several ranges), node vs nginx, answers checked byte for byte.
- ``python -m reelcdn.loadtest.bench.crowd``: 500 concurrent requests for one cold object
  (request coalescing), node vs nginx ``proxy_cache_lock``.
- ``python -m reelcdn.loadtest.bench.origin --port N``: the origin those benchmarks fetch from.
- ``python -m reelcdn.loadtest.bench.crowdclient``: the crowd, run by ``crowd`` as a process.
- ``python -m reelcdn.loadtest.bench.memory overhead|soak|disk``: bytes per cached entry, RSS
  under a long mixed player load, and whether a disk tier would pay.
- ``python -m reelcdn.loadtest.bench.memload origin|client``: the memory soak's catalogue, its
  origin and its mixed-load client, run by ``memory soak`` as processes.
- ``python -m reelcdn.loadtest.bench.twins``: the Cython extensions against their pure twins.
- ``python -m reelcdn.loadtest.bench.s3_clients``: the S3 origin's boto3 threads against
  aiobotocore.

Shared parts: ``procs`` (subprocesses, loopback HTTP), ``servers`` (origin, nginx, node as
targets), ``wrk``, ``report`` (medians, Markdown), ``machine`` (what the run ran on),
``common`` (argument plumbing), ``coldobj`` (path-derived cold bodies); data files
``nginx.conf.tmpl``, ``range64k.lua`` and ``ranges.lua``.
"""
