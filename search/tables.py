"""The one table printer: every table segtune shows or writes (the end-of-run summary,
`evaluate`, `repeat` / `crossval` results, `compare`) is laid out here, as aligned text for a
terminal or as Markdown for a file."""

from __future__ import annotations

from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False,
          right: Sequence[int] = ()) -> list[str]:
    """The lines of a table. Text: columns padded to their widest cell, two spaces apart,
    dashes under the header. Markdown: `| a | b |` rows under a `| --- |` line, the columns
    numbered in `right` aligned right."""
    if markdown:
        rule = ["---:" if i in right else "---" for i in range(len(header))]
        return [_md(header), _md(rule), *(_md(r) for r in rows)]
    cells = [[str(c) for c in header], *([str(c) for c in r] for r in rows)]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=False))).rstrip()

    return [line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])]


def _md(row: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in row) + " |"
