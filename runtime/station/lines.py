"""Where each key of a TOML file is: ``tomllib`` gives values, not lines, so a small scan of the text finds the
``[table]`` / ``[[array]]`` headers and the ``key =`` lines (errors name the line to fix).

Tables are addressed as tuples: ``("outputs", "events")``, the second ``[[cameras]]`` as ``("cameras", 1)``.
Keys inside inline tables or multi-line values are found through their enclosing key or header.
"""
from __future__ import annotations

import re
from typing import Optional

_ARRAY = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([^\]\[]+?)\s*\]")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(p.strip("\"'") for p in _PART.findall(dotted))


class TomlLines:
    """Line numbers (1-based) of the headers and keys of one TOML text."""

    def __init__(self, text: str):
        self.headers: dict[tuple, int] = {}
        self.keys: dict[tuple, int] = {}
        arrays: dict[tuple, int] = {}
        table: tuple = ()
        in_string: Optional[str] = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            m = _ARRAY.match(line)
            if m:
                name = _parts(m.group(1))
                index = arrays[name] = arrays.get(name, -1) + 1
                table = self._resolve(name, arrays, last_is_new=True) + (index,)
                self.headers.setdefault(table, number)
                continue
            m = _TABLE.match(line)
            if m:
                table = self._resolve(_parts(m.group(1)), arrays)
                self.headers.setdefault(table, number)
                continue
            m = _KEY.match(line)
            if m:
                path = _parts(m.group(1))
                for depth in range(1, len(path)):  # a dotted key opens its tables
                    self.headers.setdefault(table + path[:depth], number)
                self.keys.setdefault((table + path[:-1], path[-1]), number)
                rest = line[m.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_string = quote

    @staticmethod
    def _resolve(name: tuple, arrays: dict, last_is_new: bool = False) -> tuple:
        """``[cameras.extra]`` inside the current ``[[cameras]]`` element: insert the element's index."""
        out: tuple = ()
        stop = len(name) - 1 if last_is_new else len(name)
        for i, part in enumerate(name):
            out += (part,)
            if i < stop and name[: i + 1] in arrays:
                out += (arrays[name[: i + 1]],)
        return out

    def line_of(self, table: tuple, key: Optional[str] = None) -> Optional[int]:
        """The line of ``key`` in ``table`` (``key`` None: of the table's header); falls back to the table's
        header, then to the key that holds the table in its parent (an inline table)."""
        table = tuple(table)
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if key is not None:  # a key that is a table: its first header ([output.events] for key 'output')
            below = [n for t, n in self.headers.items() if t[: len(table) + 1] == table + (key,)]
            if below:
                return min(below)
        while table:
            if table in self.headers:
                return self.headers[table]
            if isinstance(table[-1], str) and (table[:-1], table[-1]) in self.keys:
                return self.keys[(table[:-1], table[-1])]
            table = table[:-1]
        return None


def describe(table: tuple, key: Optional[str]) -> str:
    """``key 'max_bytes' of [outputs.events]``, ``key 'class' of camera #2``, ``[artifacts.plates]``."""
    where = (f"camera #{table[1] + 1}" if len(table) >= 2 and table[0] == "cameras" and isinstance(table[1], int)
             else f"[{dotted(table)}]" if table else "the top level")
    return f"key '{key}' of {where}" if key is not None else where


def dotted(table: tuple) -> str:
    return ".".join(str(p) if isinstance(p, str) else f"#{p + 1}" for p in table)
