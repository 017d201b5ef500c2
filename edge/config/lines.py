"""Where each key of a TOML file is written: dotted key paths mapped to line numbers.

``tomllib`` gives values without positions, so a configuration error naming
``node.edge-a.cache_memory`` would not say where to look. This module reads the text a second
time, only for its structure: table headers (``[node.edge-a]``), array-of-tables headers
(``[[node.edge-a.ttl]]``, numbered ``ttl[0]``, ``ttl[1]``, …), dotted keys (``limits.idle_timeout
= …``), inline tables (``keys = { k1 = "…" }``) and array items (``parents[1]``). Paths are
spelt as the loaders spell the keys of their errors: names joined by ``.``, an index in
brackets.

It is meant for text ``tomllib`` has already accepted; on anything it does not understand it
returns what it found so far (a key without a line is still named, just without a line). No
I/O, nothing of the product imported.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping

__all__ = ["key_lines", "line_of"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PATH_PART = re.compile(r"\[\d+\]|[^.\[\]]+")
_SCALAR = re.compile(r"[^,\]}\n#]*")  # a number, boolean or date: up to what ends a value


class _Done(Exception):
    """The scanner met the end of the text, or something it does not understand."""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.explicit: dict[str, int] = {}
        self.implicit: dict[str, int] = {}
        self.arrays: dict[str, int] = {}  # [[path]] → index of its last table

    # -- characters -----------------------------------------------------------------------

    def line(self) -> int:
        return bisect.bisect_right(self.starts, self.pos)

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _Done
        self.pos += len(token)

    def skip(self, *, newlines: bool) -> None:
        """Skip blanks and comments; with ``newlines``, line ends too."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t" or (newlines and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    # -- keys and values ------------------------------------------------------------------

    def simple_key(self) -> str:
        c = self.peek()
        if c == '"':
            return self.basic_string()
        if c == "'":
            end = self.text.find("'", self.pos + 1)
            if end < 0:
                raise _Done
            key = self.text[self.pos + 1:end]
            self.pos = end + 1
            return key
        match = _BARE_KEY.match(self.text, self.pos)
        if match is None:
            raise _Done
        self.pos = match.end()
        return match.group()

    def key(self) -> list[str]:
        parts = [self.simple_key()]
        while True:
            self.skip(newlines=False)
            if self.peek() != ".":
                return parts
            self.pos += 1
            self.skip(newlines=False)
            parts.append(self.simple_key())

    def basic_string(self) -> str:
        """A one-line "…" string; escapes are kept as written (key names rarely have any)."""
        text, i = self.text, self.pos + 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\n":
                raise _Done
            i += 2 if text[i] == "\\" else 1
        if i >= len(text):
            raise _Done
        value = text[self.pos + 1:i]
        self.pos = i + 1
        return value

    def multiline_string(self, quote: str) -> None:
        text, i = self.text, self.pos + 3
        while True:
            end = text.find(quote, i)
            if end < 0:
                raise _Done
            if quote == '"""':
                backslashes = 0
                j = end - 1
                while j >= i and text[j] == "\\":
                    backslashes += 1
                    j -= 1
                if backslashes % 2:
                    i = end + 1
                    continue
            end += 3
            for _ in range(2):  # up to two more quotes end the content
                if text.startswith(quote[0], end):
                    end += 1
            self.pos = end
            return

    def value(self, path: str) -> None:
        c = self.peek()
        if not c:
            raise _Done
        if c == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip(newlines=True)
                if self.peek() == "]":
                    self.pos += 1
                    return
                item = f"{path}[{index}]"
                self.explicit[item] = self.line()
                self.value(item)
                self.skip(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
                    index += 1
        elif c == "{":
            self.pos += 1
            while True:
                self.skip(newlines=True)
                if self.peek() == "}":
                    self.pos += 1
                    return
                self.key_value(path)
                self.skip(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
        elif self.peek(3) in ('"""', "'''"):
            self.multiline_string(self.peek(3))
        elif c == '"':
            self.basic_string()
        elif c == "'":
            self.simple_key()
        else:  # numbers, booleans, dates: up to what ends a value
            match = _SCALAR.match(self.text, self.pos)
            assert match is not None
            if match.end() == self.pos:
                raise _Done
            self.pos = match.end()

    def key_value(self, table: str) -> None:
        line = self.line()
        parts = self.key()
        path = table
        for part in parts[:-1]:
            path = f"{path}.{part}" if path else part
            self.implicit.setdefault(path, line)
        path = f"{path}.{parts[-1]}" if path else parts[-1]
        self.explicit[path] = line
        self.skip(newlines=False)
        self.expect("=")
        self.skip(newlines=False)
        self.value(path)

    # -- tables ---------------------------------------------------------------------------

    def header(self) -> str:
        line = self.line()
        array = self.peek(2) == "[["
        self.pos += 2 if array else 1
        self.skip(newlines=False)
        parts = self.key()
        self.expect("]]" if array else "]")
        path = ""
        for part in parts[:-1]:
            path = f"{path}.{part}" if path else part
            self.implicit.setdefault(path, line)
            if path in self.arrays:  # a sub-table of the latest [[path]] table
                path = f"{path}[{self.arrays[path]}]"
        path = f"{path}.{parts[-1]}" if path else parts[-1]
        if array:
            index = self.arrays.get(path, -1) + 1
            self.arrays[path] = index
            self.implicit.setdefault(path, line)
            path = f"{path}[{index}]"
        self.explicit[path] = line
        return path

    def run(self) -> dict[str, int]:
        table = ""
        try:
            while True:
                self.skip(newlines=True)
                if self.pos >= len(self.text):
                    break
                if self.peek() == "[":
                    table = self.header()
                else:
                    self.key_value(table)
                self.skip(newlines=False)
                if self.peek() not in ("", "\n", "\r"):
                    raise _Done
        except (_Done, IndexError):
            pass
        return {**self.implicit, **self.explicit}


def key_lines(text: str) -> dict[str, int]:
    """Every key, table and array item of a TOML text, as a dotted path, with the line (from
    1) where it is written. A table made only implicitly (``node`` by ``[node.a]``) gets the
    line of its first mention."""
    return _Scanner(text).run()


def line_of(lines: Mapping[str, int], key: str) -> int | None:
    """The line of ``key`` (a dotted path, indexes in brackets); a key not written in the file
    (a missing one, say) gets the line of the nearest table or array above it that is, though
    never a top-level table's for a deeper key (``node`` says nothing about ``node.x``).
    None when nothing fits."""
    if not key:
        return None
    if key in lines:
        return lines[key]
    parts = _PATH_PART.findall(key)
    for end in range(len(parts) - 1, 1, -1):
        prefix = ""
        for part in parts[:end]:
            prefix += part if part.startswith("[") or not prefix else f".{part}"
        if prefix in lines:
            return lines[prefix]
    return None
