"""Plain-text tables of the CLI."""

from semid.cli.table import format_table


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
        "1200",
    ]
    assert len({len(line) for line in lines[2:]}) == 1  # numbers right-aligned in one column
