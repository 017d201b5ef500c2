"""reelcdn.loadtest: a player-emulating load harness for any HLS CDN (``reelcdn loadtest``).

Why a package of small modules: each piece is usable and testable alone, and a video team
pointing it at its own CDN should be able to read the one that matters to a question.

- ``player``: one virtual player (start-up, ABR, buffer model, CMCD); ``hls``, ``cmcd``,
  ``network`` (per-player link caps and RTT) are its parts.
- ``workload``: arrivals and scenarios on one event loop; ``catalog``: videos and Zipf.
- ``runner``: a whole run (cache preparation, scrapes, processes, progress).
- ``scrape`` (``/metrics``) and ``cachestatus`` (RFC 9211 tally): the CDN's side.
- ``summary`` (numbers, SLOs), ``report`` (HTML with plots), ``cli`` (the sub-command).
- ``compare``, ``fileorigin``, ``nginx3tier/``: the side-by-side run with nginx.
- ``bench/``: the wrk/crowd micro-benchmarks of the cache node (separate, older).

See docs/loadtest.md.
"""
