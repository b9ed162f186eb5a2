"""Start-up cost of the CLI: a command imports only its own module, and a model only its own code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import semid
from semid.cli.main import COMMANDS, main, selected_command
from semid.models import BUILTIN_MODELS, available_models, model_class


def loaded_modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_help_imports_neither_torch_nor_any_command():
    loaded = loaded_modules_after(
        "from semid.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert "torch" not in loaded
    assert not {module for _, _, module, _ in COMMANDS} & loaded


def test_a_command_imports_its_own_module_only():
    loaded = loaded_modules_after(
        "from semid.cli.main import main\n"
        "try:\n    main(['index', 'stats', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert "semid.cli.index_stats" in loaded
    assert "semid.cli.train_recommender" not in loaded and "semid.cli.predict" not in loaded


@pytest.mark.parametrize(
    "argv",
    [["predict", "--help"], ["eval", "--help"], ["serve", "--help"], ["index", "add", "--help"],
     ["index", "stats", "--help"], ["index", "build", "--help"], ["train", "recommender", "--help"],
     ["train", "retriever", "--help"],
     ["predict", "runs/x"], ["train", "recommender", "--dataset", "x"],  # usage errors
     ["train", "recommender", "--dataset", "x", "--index", "i", "--model", "mmgrek", "--out", "o"],
     ["predict", "no/such/run", "--user", "1"], ["eval", "no/such/run"], ["serve", "no/such/run"]],
)  # fmt: skip
def test_commands_answer_help_usage_errors_and_a_wrong_run_without_torch(argv):
    loaded = loaded_modules_after(  # the help text is kept out of the printed module names
        "import contextlib, io\nfrom semid.cli.main import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main({argv!r})\n"
        "    except SystemExit:\n        pass"
    )
    assert "semid.cli.main" in loaded and "torch" not in loaded


def test_serve_tells_a_taken_port_without_torch(tmp_path):
    """A server already on the port: told before the run, torch or the web server loads."""
    import socket

    (tmp_path / "manifest.json").write_text(
        '{"format_version": 1, "task": "recommend", "parts": {}}'
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = ["serve", str(tmp_path), "--port", str(taken.getsockname()[1])]
        loaded = loaded_modules_after(
            f"from semid.cli.main import main\nassert main({argv!r}) == 2"
        )
    assert "semid.sockets" in loaded and not {"torch", "uvicorn", "semid.serving"} & loaded


def test_mmgrec_does_not_load_transformers_but_tiger_does():
    mmgrec = loaded_modules_after(
        "import semid.cli.predict, semid.cli.train_recommender\n"
        "from semid.models import model_class\nmodel_class('mmgrec')"
    )
    assert "semid.generators.mmgrec" in mmgrec and "transformers" not in mmgrec
    tiger = loaded_modules_after("from semid.models import model_class\nmodel_class('tiger')")
    assert "transformers" in tiger


@pytest.mark.parametrize("task", ["recommend", "retrieve", "text2image"])
def test_a_task_loads_the_training_loop_only_to_train(task):
    """eval, predict, serve and index build load a task: accelerate (and boto3, which it imports)
    cost them about a second each when the task imported the training loop at its top."""
    loaded = loaded_modules_after(f"import semid.tasks.{task}")
    assert f"semid.tasks.{task}" in loaded
    assert not {"accelerate", "semid.training.fit", "semid.training.checkpoints"} & loaded


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_models_register_under_their_names(name):
    assert model_class(name).name == name
    assert name in available_models()


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["index", "build", "--dataset", "x"], ("index", "build")),
        (["eval", "runs/x"], ("eval", None)),
        (["index", "--help"], None),
        (["train", "bogus"], None),
        ([], None),
        (["--version"], None),
    ],
)
def test_selected_command(argv, command):
    assert selected_command(argv) == command


def test_console_script_is_this_interpreters_not_the_first_on_path(tmp_path, monkeypatch):
    from semid.cli import console_script

    stale = tmp_path / "semid"  # another environment's command, first on PATH
    stale.write_text("#!/bin/sh\nexit 1\n")
    stale.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    beside = Path(sys.executable).parent / "semid"
    assert beside.is_file()  # pip installed the command beside the interpreter running the tests
    assert console_script() == str(beside)
    done = subprocess.run([console_script(), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "semid" in done.stdout


def test_python_dash_m_semid_is_the_command(tmp_path):
    """`python -m semid` where the scripts folder is not on PATH: the CLI, with its exit codes."""
    done = subprocess.run([sys.executable, "-m", "semid", "--version"], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == f"semid {semid.__version__}"
    done = subprocess.run([sys.executable, "-m", "semid", "eval", str(tmp_path / "none")],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("semid: error:")


def test_the_package_version_is_semid_version():
    """pyproject.toml reads the version from semid.__version__ (one place to change it)."""
    from importlib.metadata import version

    assert version("semid") == semid.__version__


def test_a_closed_pipe_ends_the_command_quietly():
    """`semid ... | head` closes the pipe while the command still prints: exit 141 as Unix tools
    do, without a traceback (here a command that prints 10 MB)."""
    script = (
        "import sys\nimport semid.cli.index_stats as stats\n"
        "stats.run = lambda args: [print('x' * 99) for _ in range(100_000)] and 0\n"
        "from semid.cli.main import main\nsys.exit(main(['index', 'stats', 'any']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "x" * 99 + "\n"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("printed", ["print('x' * 99)", "sys.stdout.write('x' * 99 + chr(10))"])
def test_a_full_standard_output_is_one_line(printed):
    """Standard output on a full device (`> /dev/full`): one line naming it and exit 2, without a
    traceback, also for what Python still holds at exit."""
    script = (
        "import sys\nimport semid.cli.index_stats as stats\n"
        f"stats.run = lambda args: [{printed} for _ in range(100_000)] and 0\n"
        "from semid.cli.main import main\nsys.exit(main(['index', 'stats', 'any']))"
    )
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-c", script], stdout=full, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "semid: error: no space left on device while writing standard output; free space and "
        "rerun (what it wrote is incomplete)\n"
    )


def test_an_input_output_error_on_a_stream_is_one_line(monkeypatch, capsys):
    """A failing disk under a redirected output, or a terminal gone (a closed ssh session), gave
    EIO as a traceback; it is one line, exit 2, as a full device is."""
    import errno

    import semid.cli.index_stats as stats

    def fail(args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(stats, "run", fail)
    assert main(["index", "stats", "any"]) == 2
    assert capsys.readouterr().err == (
        "semid: error: an input/output error on standard output; check the device (`dmesg`) or "
        "the terminal, and rerun (what it wrote is incomplete)\n"
    )

    def fail_reading(args):  # a failing disk under an input file: named, not called output
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/data/log.csv")

    monkeypatch.setattr(stats, "run", fail_reading)
    assert main(["index", "stats", "any"]) == 2
    assert capsys.readouterr().err == (
        "semid: error: an input/output error on /data/log.csv; check the device (`dmesg`) and rerun\n"
    )

    class GoneTerminal:  # stderr is the terminal that went away: no second traceback
        def write(self, text):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def flush(self):
            pass

    monkeypatch.setattr(stats, "run", fail)
    monkeypatch.setattr(sys, "stderr", GoneTerminal())
    assert main(["index", "stats", "any"]) == 2


def test_out_dash_on_a_closed_standard_output_names_it():
    """`--out -` with standard output closed (`>&-`) is refused naming standard output (not the
    /dev/fd/1 it is written through)."""
    script = (
        "import os, sys\nfrom semid.atomic import check_output_file\nos.close(1)\n"
        "from semid.errors import SemidError\n"
        "try:\n    check_output_file('/dev/fd/1')\n"
        "except SemidError as e:\n    sys.stderr.write(str(e))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stderr == (
        "standard output: descriptor 1 is not open for writing; choose another --out"
    )


def test_train_retriever_help_shows_each_models_budget(capsys):
    with pytest.raises(SystemExit):
        main(["train", "retriever", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: None" not in text
    assert "max epochs (default: 10 for promptdsi, 4 for avg)" in text
    assert (
        "--batch-size BATCH_SIZE examples per step of each process (default: 32 for "
        "promptdsi, 256 for avg)"
    ) in text


def test_top_level_and_group_help_show_the_workflow_and_every_example_parses(capsys):
    """`semid --help`, `semid index --help` and `semid train --help` showed no example, though the
    README says every command's help has one."""
    import shlex

    from semid.cli.main import WORKFLOW, build_parser

    for argv, shown in ((["--help"], WORKFLOW), (["train", "--help"], [WORKFLOW[1], WORKFLOW[6]])):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "examples:" in out and all(f"  {line}\n" in out for line in shown)
    for line in WORKFLOW:  # each example is a command line its parser takes
        argv = shlex.split(line)[1:]
        build_parser(selected_command(argv)).parse_args(argv)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_device_named_with_out_is_named(tmp_path):
    """`--out /dev/full` was told as "no space left ... while writing standard output"."""
    from semid.atomic import output_file

    with pytest.raises(OSError) as caught, output_file("/dev/full") as f:
        f.write("x" * 100_000)
        f.flush()
    assert caught.value.filename == "/dev/full"
