"""Entry point of the `semid` command: subcommands, one module each, and error handling."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, NoReturn

from semid import __version__
from semid.atomic import DISK_FULL_ERRNOS, made_folders_count, remove_empty_made_folders
from semid.cli.table import shorten_to_width
from semid.distributed import (
    MainProcessError,
    is_launched,
    is_main_process,
    leave_process_group,
    stop_with_launcher,
)
from semid.errors import SemidError
from semid.notes import show_on_console
from semid.wording import did_you_mean

# (group, name, module, description): each module has `add_arguments(parser)`, `run(args) -> int`
# and EXAMPLE. A name of None makes the group itself the command (`semid eval RUN`). Only the module
# of the command being run is imported, so `semid --help` answers at once instead of loading torch;
# the commands on a run (predict, eval, serve, index add/stats) import the task layer inside
# `run`, so their --help and usage errors do too.
COMMANDS = [
    (
        "index",
        "build",
        "semid.cli.index_build",
        "Build a semantic-ID index: embed items (or read embeddings), fit a quantizer, resolve "
        "collisions.",
    ),
    (
        "index",
        "stats",
        "semid.cli.index_stats",
        "Print the health stats of an ID index: per-level usage and perplexity, collisions.",
    ),
    (
        "index",
        "add",
        "semid.cli.index_add",
        "Add new items to a run's (or an index's) semantic IDs with the saved quantizer; no "
        "retraining.",
    ),
    (
        "train",
        "recommender",
        "semid.cli.train_recommender",
        "Train a recommender (mmgrec, tiger, sasrec or pop) on a dataset's leave-one-out split.",
    ),
    (
        "train",
        "retriever",
        "semid.cli.train_retriever",
        "Train a generative retriever: PromptDSI on documents (debian-docs, manpages, a JSONL, CSV, "
        "TSV or Parquet file, a BEIR folder) or AVG (text to image) on images (fashion-mnist, digits, a "
        "folder or a table of image paths).",
    ),
    (
        "eval",
        None,
        "semid.cli.eval",
        "Evaluate a trained run on its valid or test split (full ranking); prints and saves "
        "metrics.",
    ),
    (
        "predict",
        None,
        "semid.cli.predict",
        "Predict the top-k items (for users or histories) or documents/images (for queries) with "
        "a run.",
    ),
    (
        "serve",
        None,
        "semid.cli.serve",
        "Serve a trained run over HTTP: POST /predict (top-k items or documents), GET /health, "
        "GET /info; concurrent requests are batched into one model call.",
    ),
]


def selected_command(argv: Sequence[str]) -> tuple[str, str | None] | None:
    """The (group, name) of COMMANDS that ``argv`` runs, or None (no command, or a wrong one)."""
    for group, name, _, _ in COMMANDS:
        if argv[:1] == [group] and (name is None or argv[1:2] == [name]):
            return group, name
    return None


def check_no_empty_argument(argv: Sequence[str]) -> None:
    """SemidError at the first empty argument (``--out ""`` or ``--out=``), which is almost always an
    unset shell variable (``--out "$RUN"``) and would otherwise name the current folder."""
    for i, arg in enumerate(argv):
        if arg == "" or (arg.startswith("--") and arg.endswith("=")):
            after = "" if arg else f" after {argv[i - 1]}" if i else ""
            flag = f"{arg[:-1]} is given an empty value" if arg else f"empty argument{after}"
            raise SemidError(f"{flag} (an unset shell variable?); give it a value")


def check_utf8_arguments(argv: Sequence[str]) -> None:
    """SemidError at the first argument that is not UTF-8 (Python holds its bytes as surrogates):
    a folder named in another encoding, which the files semid writes and reads cannot name."""
    for arg in argv:
        if any("\udc80" <= c <= "\udcff" for c in arg):
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise SemidError(f"argument {shown!r} is not UTF-8 text (a file name in another "
                             "encoding, or a terminal not set to UTF-8?); rename the file or folder "
                             "to UTF-8, or set a UTF-8 locale")  # fmt: skip


# the usual way through the commands, shown by `semid --help` (and each group's lines by
# `semid index --help`, `semid train --help`); each command's --help has examples of its own
WORKFLOW = (
    "semid index build --dataset ml-100k --out runs/ml-100k/index",
    "semid train recommender --dataset ml-100k --index runs/ml-100k/index --model mmgrec "
    "--out runs/ml-100k/mmgrec",
    "semid eval runs/ml-100k/mmgrec",
    "semid predict runs/ml-100k/mmgrec --user 196 --k 10",
    "semid index add runs/ml-100k/mmgrec --items new_items.csv",
    "semid serve runs/ml-100k/mmgrec --port 8000",
    "semid train retriever --dataset my_docs.jsonl --out runs/docs",
    "semid index stats runs/ml-100k/index",
)


def workflow_epilog(prefix: str = "semid ") -> str:
    """The WORKFLOW lines that start with ``prefix``, as an --help epilog."""
    return "examples:\n" + "\n".join(f"  {line}" for line in WORKFLOW if line.startswith(prefix))


class CommandParser(argparse.ArgumentParser):
    """argparse's parser, whose errors in a command name a misspelt option and the nearest one it
    takes (``--kk``: did you mean ``--k``?), before argparse's own words."""

    argv: ClassVar[list[str]] = []  # the command line being parsed

    def error(self, message: str) -> NoReturn:
        """Exit 2 with one line: ``message``, led by the first option the command lacks, and where
        to read the command's usage (argparse printed the whole usage above it: 14 lines)."""
        options = [name for action in self._actions for name in action.option_strings]
        if self._subparsers is None and options:  # a command's own parser: its options are all here
            for arg in self.argv:
                name = arg.split("=", 1)[0]
                if name.startswith("--") and name not in options:
                    # compared without the dashes, which every option shares: --bogus is not
                    # near --out
                    bare = {option.lstrip("-"): option for option in options}
                    close = difflib.get_close_matches(name.lstrip("-"), list(bare), n=1)
                    fix = f"did you mean {bare[close[0]]}?" if close else f"see {self.prog} --help"
                    message = f"unknown option {name} ({fix}); {message}"
                    break
        usage = "" if f"{self.prog} --help" in message else f" (usage: {self.prog} --help)"
        self.exit(2, f"{self.prog}: error: {message}{usage}\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """argparse's check of a value against ``action.choices``, naming the nearest choice of a
        misspelt one (``--split tset``: did you mean 'test'?)."""
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}"
                                         f"{did_you_mean(value, action.choices)} (choose from {choices})")  # fmt: skip
        super()._check_value(action, value)


def build_parser(load: tuple[str, str | None] | None = None) -> argparse.ArgumentParser:
    """The argument parser; only command ``load`` (a ``selected_command``) gets its arguments.

    Every other command is listed with its description alone, which is all ``--help`` shows of it."""
    parser = CommandParser(prog="semid", description="Generative retrieval with semantic IDs.",
                           epilog=workflow_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"semid {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    sub_by_group: dict[str, argparse._SubParsersAction] = {}
    for group, name, module_name, description in COMMANDS:
        if name is None:
            add_parser, command_name = groups.add_parser, group
        else:
            if group not in sub_by_group:
                gp = groups.add_parser(group, help=f"{group} commands", epilog=workflow_epilog(f"semid {group} "),
                                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
                sub_by_group[group] = gp.add_subparsers(
                    dest="command", metavar="SUBCOMMAND", required=True
                )
            add_parser, command_name = sub_by_group[group].add_parser, name
        if load != (group, name):
            add_parser(command_name, help=description, description=description)
            continue
        module = importlib.import_module(module_name)
        p = add_parser(
            command_name,
            help=description,
            description=description,
            epilog=f"example:\n  {module.EXAMPLE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # `eval --user 196` read as --users 196 (a subset of users)
        )
        module.add_arguments(p)
        # default_of: tell flags given; command_parser: its errors for what the top level leaves
        p.set_defaults(run=module.run, default_of=p.get_default, command_parser=p)
    return parser


def peer_stopped(error: BaseException) -> bool:
    """Whether ``error`` is a collective of a launched job that failed because another of its
    processes stopped (killed, out of memory): torch's distributed errors, told by their type or
    their backend's message, without importing torch."""
    text = str(error)
    return is_launched() and (
        type(error).__name__ in ("DistError", "DistBackendError", "DistNetworkError")
        or "Connection closed by peer" in text  # gloo
        or "Connection reset by peer" in text
    )


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: Python's MemoryError, torch's CUDA
    OutOfMemoryError or its CPU allocator's RuntimeError (told by their message, without
    importing torch)."""
    text = str(error)
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in text
        or "CUDA out of memory" in text
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a container stopped), ended as Ctrl-C is, with its own exit code."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _exit_now(code: int, signum: int, frame: object) -> None:
    """End the process at once with ``code``, the exit code of a command that has finished: a
    Ctrl-C during the interpreter's exit (130) made a finished `index add` look interrupted, and
    the same command then refused its items; and a hang in the exit can still be stopped."""
    with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing to flush
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _resumed_from(out: str | os.PathLike) -> str:
    """Where a training of ``out`` that stopped resumes: its last checkpoint's step (the steps
    after it are trained again), or the start when it wrote none."""
    from semid.training.checkpoint_names import last_checkpoint_step, run_checkpoints  # noqa: PLC0415

    step = last_checkpoint_step(run_checkpoints(out))
    if step is None:
        return "(it wrote no checkpoint yet, so it starts over)"
    return f"from its last checkpoint, at step {step:,}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input prints one line to stderr and returns a non-zero exit code."""
    args = None
    show_on_console()  # the library's notes and progress lines (semid.notes)
    folders_before = made_folders_count()  # a refused command removes the empty ones it made
    from_shell = argv is None  # the `semid` process itself, not a caller in Python
    try:
        if from_shell:  # SIGTERM as Ctrl-C
            signal.signal(signal.SIGTERM, _terminate)
            if is_launched():  # a process of a launched job ends with its launcher
                stop_with_launcher()
        argv = sys.argv[1:] if argv is None else list(argv)
        check_no_empty_argument(argv)
        check_utf8_arguments(argv)
        # argument types may raise SemidError (--columns)
        CommandParser.argv = argv
        parser = build_parser(selected_command(argv))
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command's parser, which knows its options, not by the top level
            getattr(args, "command_parser", parser).error(
                f"unrecognized arguments: {' '.join(extra)}"
            )
        if not is_main_process():  # ranks > 0 of `accelerate launch` stay quiet; rank 0 reports
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
            logging.getLogger("semid.notes").setLevel(logging.ERROR)  # notes: rank 0's
        code = args.run(args)
        if from_shell:  # done: a late Ctrl-C ends the process with the command's own exit code
            for stop in (signal.SIGINT, signal.SIGTERM):
                signal.signal(stop, partial(_exit_now, code))
        return code
    except SemidError as e:
        _close_progress_bars()
        if is_main_process():
            print(f"semid: error: {e}", file=sys.stderr)
        elif not isinstance(e, MainProcessError):  # its own: the main process does not tell it
            print(f"semid: error (process {os.environ.get('RANK')}): {e}", file=sys.stderr)
        remove_empty_made_folders(since=folders_before)
        if is_launched():
            leave_process_group()
        return 2
    except KeyboardInterrupt as interrupt:
        _close_progress_bars()
        if getattr(args, "group", None) == "serve":  # stopped while loading: nothing to finish
            print("semid serve: stopped before it served", file=sys.stderr)
            return 0  # as a server stopped while serving: a supervisor's stop is no failure
        resume = ""
        if getattr(args, "no_resume", False):  # training's start clears the earlier checkpoints
            resume = ("; run it again without --no-resume to resume from the last checkpoint it "
                      "wrote, if it got that far (the earlier model stays until a run finishes)")  # fmt: skip
        elif hasattr(args, "no_resume"):  # a training command: its checkpoints carry on
            resume = "; run the same command again to resume " + _resumed_from(args.out)
        elif (getattr(args, "group", None), getattr(args, "command", None)) == ("index", "add"):
            resume = (
                "; an add stopped before its end leaves the run or index as it was: run the same "
                "command again"
            )
        # in a launched job the launcher ends the others when one process fails (told above)
        stopped = "interrupted"
        if is_launched() and isinstance(interrupt, Terminated):
            stopped = "stopped by the launcher"
        if is_main_process():
            print(f"semid: {stopped}; artifacts written before the interruption are intact{resume}",
                  file=sys.stderr)  # fmt: skip
        return 143 if isinstance(interrupt, Terminated) else 130  # 128 + the signal, as shells say
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises RuntimeError
        _close_progress_bars()
        if peer_stopped(e):
            print(f"semid: error: another process of this launched job stopped "
                  f"({shorten_to_width((str(e).splitlines() or [type(e).__name__])[0], 160)}); run the same command again to resume from "
                  "the last checkpoint", file=sys.stderr)  # fmt: skip
            return 2
        if not out_of_memory(e):
            raise
        levers = _MEMORY_LEVERS.get(getattr(args, "group", None), _MEMORY_LEVERS["train"])
        print(f"semid: error: out of memory ({type(e).__name__}); ask for less ({levers}) or use "
              "a machine with more memory", file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # `semid ... | head` closed the pipe: stop quietly, as Unix tools do
        _silence_stdout()  # Python flushes stdout at exit, which would raise again
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe
    except OSError as e:  # artifacts tell a failed write themselves (WriteFailedError); a stream
        if e.errno not in {*DISK_FULL_ERRNOS, errno.EIO}:
            raise
        _close_progress_bars()
        try:
            sys.stdout.flush()
        except OSError:  # the output that failed: what it still holds cannot go out at exit
            _silence_stdout()
        # a write through print() or --out - (/dev/stdout) names no file
        if e.errno != errno.EIO:
            message = (f"no space left on device while writing {e.filename or 'standard output'}; "
                       "free space and rerun (what it wrote is incomplete)")  # fmt: skip
        elif e.filename:  # a failing disk under a file read or written
            message = f"an input/output error on {e.filename}; check the device (`dmesg`) and rerun"
        else:  # a failing disk under redirected output, or a terminal gone (a closed ssh)
            message = ("an input/output error on standard output; check the device (`dmesg`) or "
                       "the terminal, and rerun (what it wrote is incomplete)")  # fmt: skip
        with contextlib.suppress(OSError):  # stderr may be the terminal that is gone
            print(f"semid: error: {message}", file=sys.stderr)
        return 2


# what each command group can ask for less of when it runs out of memory
_MEMORY_LEVERS = {
    "index": "a --quantizer with fewer levels or codes per level, fewer items at a time",
    "train": "--batch-size, --max-history, --extra-codes, --num-beams, the model's sizes in "
    "--model-config",
    "eval": "--batch-size, --num-beams",
    "predict": "--batch-size, --num-beams, fewer inputs at a time",
    "serve": "--max-batch, --max-inputs, --workers",
}


def _silence_stdout() -> None:
    """Point standard output at /dev/null: what Python still holds for a closed or full stream
    would raise again when it flushes at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _close_progress_bars() -> None:
    """Close the bars a stopped command left open (`semid.progress.close_open_bars`), if it
    showed any, so its last message does not land on a bar's line."""
    if "semid.progress" in sys.modules:
        sys.modules["semid.progress"].close_open_bars()


if __name__ == "__main__":
    sys.exit(main())
