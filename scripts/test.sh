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
