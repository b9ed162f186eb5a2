"""Plain-text tables of the CLI."""

import pytest

from semid.cli.table import display_width, format_table, metric_rows, shorten_to_width


def test_metrics_and_scores_keep_four_decimals_and_speeds_fewer():
    text = format_table(["metric", "test"], [["recall@10", 0.28166], ["score", -18.31416], ["queries_per_s", 487.79],
                                             ["queries_per_s", 3289.4], ["num_queries", 1200]])  # fmt: skip
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "test"]
    assert [line.split()[1] for line in lines[2:]] == [
        "0.2817",
        "-18.3142",
        "487.8",
        "3,289",
        "1,200",
    ]
    assert len({len(line) for line in lines[2:]}) == 1  # numbers right-aligned in one column


def test_counts_of_a_metrics_dict_are_whole_numbers():
    rows = metric_rows(
        {
            "recall@10": 1.0,
            "num_queries": 36.0,
            "num_docs": 2.5,
            "queries_per_s": 800.0,
            "d0-test/num_queries": 5014.0,
        }
    )
    assert rows == [
        ["recall@10", 1.0],
        ["num_queries", 36],
        ["num_docs", 2.5],
        ["queries_per_s", 800.0],
        ["d0-test/num_queries", 5014],
    ]
    assert [line.split()[1] for line in format_table(["metric", "v"], rows).splitlines()[2:]] == [
        "1.0000",
        "36",
        "2.5000",
        "800.0",
        "5,014",
    ]


def test_wide_characters_count_two_columns_in_a_table():
    """A column of Japanese titles was padded by characters, so the next column wandered."""
    text = format_table(["title", "score"], [["日本の首都", 1.5], ["Paris", 2.25]])
    lines = text.splitlines()
    assert [display_width(line) for line in lines[2:]] == [display_width(lines[2])] * 2
    assert lines[2].endswith("1.5000") and lines[3].endswith("2.2500")
    assert display_width("日本") == 4 and display_width("e\u0301") == 1  # a combining accent


def test_text_is_shortened_to_terminal_columns():
    """CJK text (no spaces) was printed whole: 56 characters took 112 columns of a 60-column
    cell. A long word came out as the placeholder alone."""
    japanese = "東京は日本の首都であり、世界有数の大都市である。" * 3
    cut = shorten_to_width(japanese, 60)
    assert cut.endswith(" ...") and 56 <= display_width(cut) <= 60
    assert japanese.startswith(cut[: -len(" ...")])
    assert shorten_to_width("a" * 80, 20) == "a" * 16 + " ..."
    assert shorten_to_width("one two three four five six", 20) == "one two three ..."
    assert shorten_to_width("short", 20) == "short"


@pytest.mark.parametrize("width", [0, 1, 2, 3, 4, 5])
def test_a_width_smaller_than_the_placeholder_is_kept(width):
    """The placeholder alone (4 columns) came out for any width under it, past the width asked."""
    for text in ("abcdefghij", "東京は日本の首都", " abcdefghij"):
        cut = shorten_to_width(text, width)
        assert display_width(cut) <= width and text.startswith(cut.removesuffix(" ..."))
        assert cut.removesuffix(" ...") or width < display_width(text[0])  # text, if any fits
