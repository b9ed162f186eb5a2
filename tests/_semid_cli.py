"""Run `semid` the way users do: a fresh Python process per command (used by the CLI end-to-end tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from semid.cli import console_script

# one thread per process: tiny models are fastest that way, and the test machine's cores are shared
ENV = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# a PromptDSI small enough to train in seconds (its frozen encoder built from this config, not MiniLM)
TINY_DSI = {
    "encoder_config": {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 64, "max_position_embeddings": 64},
    "max_length": 24, "prompt_layer": 1, "prompt_length": 2, "pool_sizes": [4], "d_model": 32,
    "num_heads": 2, "num_layers": 1, "d_ff": 64,
}  # fmt: skip


def command(script: bool = False) -> list[str]:
    """The `semid` console script of the interpreter running the tests (``script=True``), or
    ``python -m semid.cli.main``."""
    return [console_script()] if script else [sys.executable, "-m", "semid.cli.main"]


def start(*args: object, cwd: Path, script: bool = False) -> subprocess.Popen:
    """Start one `semid` command in ``cwd`` (stdout and stderr captured as text)."""
    argv = [*command(script), *map(str, args)]
    return subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(
    proc: subprocess.Popen, expect: int | None = 0, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Wait for a started command; check its exit code (unless ``expect`` is None)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if expect is not None:
        assert done.returncode == expect, (
            f"{' '.join(proc.args)} -> {done.returncode}\n{out[-2000:]}\n{err[-3000:]}"
        )
    return done


def semid(
    *args: object, cwd: Path, expect: int | None = 0, script: bool = False
) -> subprocess.CompletedProcess:
    """Run one `semid` command in a fresh process and check its exit code."""
    return finish(start(*args, cwd=cwd, script=script), expect)


def semid_all(*commands: tuple, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run independent commands side by side (each a fresh process); all must succeed."""
    procs = [start(*args, cwd=cwd) for args in commands]
    return [finish(p) for p in procs]


def assert_usage_error(done: subprocess.CompletedProcess, match: str = "") -> str:
    """Exit code 2, exactly one `semid: error:` line on stderr, no traceback; returns the line."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("semid: error:")]
    assert len(lines) == 1, done.stderr
    assert match in lines[0], lines[0]
    return lines[0]


def saved_metrics(run: Path, split: str = "test") -> dict[str, float]:
    """The run's saved metrics of ``split`` without timings (which differ from one call to the next)."""
    metrics = json.loads((run / "metrics.json").read_text())[split]
    return {k: v for k, v in metrics.items() if not k.endswith("per_s")}


def printed_metrics(stdout: str) -> dict[str, float]:
    """The metric table `semid eval` prints, without timings."""
    rows = [line.split() for line in stdout.splitlines()]
    return {
        r[0]: float(r[1].replace(",", ""))  # counts print as 1,682
        for r in rows
        if len(r) == 2 and r[1][:1].isdigit() and "per_s" not in r[0]
    }


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON Lines file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
