"""Where keys are written in a TOML file: tomllib parses values but reports no positions."""

from __future__ import annotations

import re

_SEGMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)')
_KEY = re.compile(r'("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*[.=]')


def segments(dotted: str) -> list[str]:
    """The parts of a dotted TOML key or table name: 'a."b.c"' -> ["a", "b.c"]."""
    return [next(g for g in m.groups() if g is not None) for m in _SEGMENT.finditer(dotted)]


class KeyLines:
    """Maps (table, index, key) to the 1-based line that key is written on, by scanning the text.

    `table` is "" for the top level or a dotted name ("collector.exporters"), `index` counts
    [[table]] entries from 0, and key None means the entry's header. Multi-line strings are
    skipped; keys written as inline tables are not found, and find() falls back to the header
    line, then for a dotted table to the line of its key in the parent table (the
    `exporters = [...]` of an array of inline tables), then to the line naming the table.
    """

    __slots__ = ("_where",)

    def __init__(self, text: str) -> None:
        self._where: dict[tuple[str, int, str | None], int] = {}
        counts: dict[str, int] = {}
        table = ""
        index = 0
        closing: str | None = None  # the delimiter of the multi-line string being skipped
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if closing is not None:
                if line.count(closing) % 2:
                    closing = None
                continue
            if line.startswith("["):
                array = line.startswith("[[")
                names = segments(line[2 if array else 1 : line.find("]")])
                if not names:
                    continue
                head = names[0]
                self._where.setdefault(("", 0, head), number)
                if len(names) > 1:
                    # [database.extra] is key "extra" of [database]; [[collector.exporters]]
                    # is key "exporters" of [collector] too
                    parent = max(counts.get(head, 0) - 1, 0)
                    self._where.setdefault((head, parent, names[1]), number)
                table = ".".join(names)
                if array:  # [[orgs]], [[collector.exporters]]: entries counted per array
                    index = counts.get(table, 0)
                    counts[table] = index + 1
                else:
                    index = 0
                self._where.setdefault((table, index, None), number)
                continue
            match = _KEY.match(line)
            if match is None:
                continue
            self._where.setdefault((table, index, segments(match[1])[0]), number)
            for delimiter in ('"""', "'''"):
                if line.count(delimiter) % 2:
                    closing = delimiter

    def find(self, table: str, index: int, key: str | None) -> int | None:
        """The line of `key` in entry `index` of `table`, else of its header, else None."""
        parent, _, last = table.rpartition(".")
        probes: list[tuple[str, int, str | None]] = [(table, index, key), (table, index, None)]
        if parent:
            probes.append((parent, 0, last))
        probes.append(("", 0, table or None))
        for probe in probes:
            line = self._where.get(probe)
            if line is not None:
                return line
        return None
