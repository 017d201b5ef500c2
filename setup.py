"""Build script: maps the design folders (edge/, shield/, ...) to the ``reelcdn.*`` packages.

The design keeps each part of the system in a top-level folder, while the installed
distribution is one namespace (``reelcdn.edge``, ``reelcdn.shield``, ...), so nothing
generic like ``edge`` lands at the top of site-packages.

It also builds the Cython hot-path modules of ``extensions/`` (docs/contributing.md, "Compiled
twins"), as an *optional* build in the manner of aio-libs' multidict/yarl: every compiled module
has a pure-Python twin, so when Cython is missing or the C compiler fails, the install goes on
without the compiled modules after a warning, and ``reelcdn.extensions`` selects the twins at
import. ``pip install -e .`` builds the modules in place (next to their ``.pyx``), which is
where the editable install imports them from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:  # distutils is setuptools' own copy on Python >= 3.12
    from setuptools.errors import CCompilerError, ExecError, PlatformError
except ImportError:  # setuptools < 59
    from distutils.errors import CCompilerError
    from distutils.errors import DistutilsExecError as ExecError
    from distutils.errors import DistutilsPlatformError as PlatformError

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


# --- optional Cython extensions ------------------------------------------------------------

# module name → .pyx source. Each entry needs a pure twin and a line in extensions/__init__.py.
CYTHON_MODULES = {
    "reelcdn.extensions._ranges": "extensions/_ranges.pyx",
    "reelcdn.extensions._lru": "extensions/_lru.pyx",
    "reelcdn.extensions._head": "extensions/_head.pyx",
    "reelcdn.extensions._reader": "extensions/_reader.pyx",
    "reelcdn.extensions._accesslog": "extensions/_accesslog.pyx",
}
# Compiler flags beyond -O2, per module. The access log's milliseconds must round as the pure
# twin's Python float arithmetic does: no fused multiply-add.
EXTRA_COMPILE_ARGS = {
    "reelcdn.extensions._accesslog": ["-ffp-contract=off"],
}

# Everything a missing or broken compiler raises: CompileError/LinkError are CCompilerErrors,
# a failing or absent `cc` binary is an ExecError, no compiler for the platform a PlatformError,
# and OSError covers the rest (e.g. an unwritable build directory).
BUILD_ERRORS = (CCompilerError, ExecError, PlatformError, OSError)


def warn(message: str) -> None:
    """A warning that stands out in build logs (pip shows it with ``-v`` or on failure)."""
    bar = "*" * 78
    print(f"\n{bar}\nWARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """``build_ext`` that turns a failed compilation into a warning and a pure-Python install.

    A module that failed is removed from ``self.extensions`` before setuptools copies
    in-place builds into the source tree or lists its outputs, so the wheel (or editable
    install) simply does not contain it; a stale in-place binary from an earlier build is
    deleted so that the pure twin really is the one imported afterwards.
    """

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as exc:  # e.g. no compiler at all for this platform
            self._give_up(self.extensions, exc)

    def build_extensions(self) -> None:
        self.check_extensions_list(self.extensions)
        failed: list[Extension] = []
        for ext in self.extensions:
            try:
                self.build_extension(ext)
            except BUILD_ERRORS as exc:
                warn(
                    f"building {ext.name} failed ({type(exc).__name__}: {exc}); "
                    "installing without it, the pure-Python twin will be used"
                )
                failed.append(ext)
        self._give_up(failed, None)

    def _give_up(self, failed: list[Extension], exc: BaseException | None) -> None:
        """Drop ``failed`` from the build and remove their stale in-place binaries."""
        if exc is not None:
            names = ", ".join(ext.name for ext in failed)
            warn(
                f"cannot build C extensions ({type(exc).__name__}: {exc}); installing without "
                f"{names}, the pure-Python twins will be used"
            )
        if not failed:
            return
        build_py = self.get_finalized_command("build_py")
        for ext in failed:
            fullname = self.get_ext_fullname(ext.name)
            package, _, _ = fullname.rpartition(".")
            stale = (
                Path(build_py.get_package_dir(package)) / Path(self.get_ext_filename(fullname)).name
            )
            if stale.exists():
                stale.unlink()
                warn(f"removed the stale in-place build {stale}")
        self.extensions = [ext for ext in self.extensions if ext not in failed]


def cython_extensions() -> list[Extension]:
    """The Cython modules, cythonized now; none (after a warning) if Cython is not installed."""
    try:
        from Cython.Build import cythonize
    except ImportError:
        warn(
            "Cython is not installed: building reelcdn without its C extensions, the "
            "pure-Python twins will be used (install Cython>=3.0 and reinstall to build them)"
        )
        return []
    extensions = [
        Extension(name, [source], extra_compile_args=["-O2", *EXTRA_COMPILE_ARGS.get(name, [])])
        for name, source in CYTHON_MODULES.items()
    ]
    return cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
        build_dir=os.path.join("build", "cython"),  # generated C stays out of the source tree
        quiet=True,
    )


setup(
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    package_data={"": ["*.toml", "*.tmpl", "*.js", "*.html", "*.lua", "*.pyi"],
                  # the web page's style sheet and its vendored libraries (docs/web.md)
                  "reelcdn.origin.web": ["*.css", "vendor/*"]},
    include_package_data=True,
    ext_modules=cython_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
