"""Plain-text tables of the CLI."""

from semid.cli.table import format_table, metric_rows


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
