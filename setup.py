"""Build script: maps the design folders (edge/, shield/, ...) to the ``reelcdn.*`` packages.

The design keeps each part of the system in a top-level folder, while the installed
distribution is one namespace (``reelcdn.edge``, ``reelcdn.shield``, ...), so nothing
generic like ``edge`` lands at the top of site-packages.
"""

from pathlib import Path

from setuptools import setup

PARTS = ["edge", "shield", "origin", "manifests", "extensions", "loadtest"]
HERE = Path(__file__).parent


def packages_under(folder: str) -> dict[str, str]:
    """``reelcdn.<folder>[.<sub>...]`` → directory, for every package below a design folder."""
    found = {}
    for init in sorted((HERE / folder).rglob("__init__.py")):
        relative = init.parent.relative_to(HERE)
        found["reelcdn." + ".".join(relative.parts)] = relative.as_posix()
    return found


PACKAGE_DIR = {"reelcdn": "reelcdn"}
for part in PARTS:
    PACKAGE_DIR.update(packages_under(part))

setup(
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    package_data={"": ["*.toml", "*.tmpl", "*.js", "*.html"]},
    include_package_data=True,
)
