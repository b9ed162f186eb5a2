"""Entry point of the `semid` command: subcommands, one module each, and error handling."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from semid import __version__
from semid.cli import eval as eval_cmd
from semid.cli import (
    index_add,
    index_build,
    index_stats,
    predict,
    serve,
    train_recommender,
    train_retriever,
)
from semid.distributed import is_main_process
from semid.errors import SemidError

# (group, name, module): each module has `add_arguments(parser)`, `run(args) -> int`, DESCRIPTION,
# EXAMPLE. A name of None makes the group itself the command (`semid eval RUN`).
COMMANDS = [
    ("index", "build", index_build),
    ("index", "stats", index_stats),
    ("index", "add", index_add),
    ("train", "recommender", train_recommender),
    ("train", "retriever", train_retriever),
    ("eval", None, eval_cmd),  # a command of its own: `semid eval RUN`
    ("predict", None, predict),
    ("serve", None, serve),
]


def _command_text(module) -> dict:
    return {
        "description": module.DESCRIPTION,
        "epilog": f"example:\n  {module.EXAMPLE}",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="semid", description="Generative retrieval with semantic IDs."
    )
    parser.add_argument("--version", action="version", version=f"semid {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    sub_by_group: dict[str, argparse._SubParsersAction] = {}
    for group, name, module in COMMANDS:
        if name is None:
            p = groups.add_parser(group, help=module.DESCRIPTION, **_command_text(module))
        else:
            if group not in sub_by_group:
                gp = groups.add_parser(group, help=f"{group} commands")
                sub_by_group[group] = gp.add_subparsers(
                    dest="command", metavar="SUBCOMMAND", required=True
                )
            p = sub_by_group[group].add_parser(
                name, help=module.DESCRIPTION, **_command_text(module)
            )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input prints one line to stderr and returns a non-zero exit code."""
    try:
        args = build_parser().parse_args(argv)  # argument types may raise SemidError (--columns)
        if not is_main_process():  # ranks > 0 of `accelerate launch` stay quiet; rank 0 reports
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
        return args.run(args)
    except SemidError as e:
        print(f"semid: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "semid: interrupted; artifacts written before the interruption are intact",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
