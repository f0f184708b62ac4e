"""The one table printer: aligned text and Markdown."""

from __future__ import annotations

from search.tables import table


def test_text_columns_are_padded_to_the_widest_cell():
    assert table(["a", "score"], [["long name", 0.5], ["b", 12.25]], right=(1,)) == [
        "a          score",
        "---------  -----",
        "long name    0.5",
        "b          12.25",
    ]


def test_markdown_rows_and_right_aligned_columns():
    assert table(["class", "x", "y"], [["heart", "0.9", "+1.0"]], markdown=True,
                 right=(1, 2)) == ["| class | x | y |", "| --- | ---: | ---: |",
                                   "| heart | 0.9 | +1.0 |"]
