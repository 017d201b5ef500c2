"""Build script: maps the design folders (edge/, shield/, ...) to the ``reelcdn.*`` packages.

The design keeps each part of the system in a top-level folder, while the installed
distribution is one namespace (``reelcdn.edge``, ``reelcdn.shield``, ...), so nothing
generic like ``edge`` lands at the top of site-packages.
"""

from setuptools import setup

PARTS = ["edge", "shield", "origin", "manifests", "extensions", "loadtest"]

setup(
    packages=["reelcdn"] + [f"reelcdn.{part}" for part in PARTS],
    package_dir={"reelcdn": "reelcdn", **{f"reelcdn.{part}": part for part in PARTS}},
)
