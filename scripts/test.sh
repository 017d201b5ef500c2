#!/usr/bin/env bash
# Install what the tests need and run the whole suite (the README's second command).
#
# Everything the tests use is installed here, from the package registries only, so that a
# fresh machine passes: Python dependencies with pip; Debian packages with apt when they are
# missing (as root). pytest's exit status is kept: "no tests ran" (5) fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
echo "== installing reelcdn and its test dependencies"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"

echo "== Debian packages the tests use: chromium + node (hls.js player), nginx (side-by-side loadtest), promtool, memcached"
# tests/test_player.py plays rendered playlists with hls.js in headless chromium (driven by
# playwright-core with executablePath /usr/bin/chromium: no browser is ever downloaded).
missing_debs=()
command -v chromium >/dev/null 2>&1 || missing_debs+=(chromium)
command -v npm >/dev/null 2>&1 || missing_debs+=(nodejs npm)
# tests/test_loadtest.py runs the same workload against an nginx proxy_cache 3-tier topology.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing_debs+=(nginx)
# tests/test_dashboard.py checks the Prometheus rules and the dashboard's queries with promtool.
command -v promtool >/dev/null 2>&1 || missing_debs+=(prometheus)
# tests/test_feed_cache.py and test_feed_prewarm.py start their own memcached processes.
command -v memcached >/dev/null 2>&1 || [ -x /usr/bin/memcached ] || missing_debs+=(memcached)
if [ "${#missing_debs[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing_debs[@]}"
    else
        echo "missing ${missing_debs[*]} and not root: the tests that need them skip (and fail in CI)"
    fi
fi
if command -v npm >/dev/null 2>&1; then
    (cd tests/player && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== lint (ruff)"
"$PYTHON" -m ruff check .

echo "== which implementations the install selected"
"$PYTHON" -c "from reelcdn import extensions; print(extensions.implementations())"

echo "== tests on uvloop (the production loop), compiled extensions"
"$PYTHON" -m pytest -q -p no:cacheprovider

echo "== the whole suite again on the pure-Python twins (REELCDN_NO_EXTENSIONS=1)"
REELCDN_NO_EXTENSIONS=1 "$PYTHON" -m pytest -q -p no:cacheprovider

echo "== protocol and coalescing tests on the plain asyncio loop"
REELCDN_TEST_LOOP=asyncio "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/test_protocol.py tests/test_hostile.py tests/test_coalescing.py tests/test_caching.py
