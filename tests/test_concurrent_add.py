"""Two `semid index add` processes on one index at the same time: both finish and no item is lost."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from semid.ids import SemanticIDs
from semid.indexing import build_ids


@pytest.mark.slow
def test_two_concurrent_adds_keep_every_item(tmp_path):
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    ids, quantizer = build_ids([f"i{j}" for j in range(300)], x, "rqkmeans:2x8", seed=0)
    index = tmp_path / "index"
    ids.save(index, quantizer=quantizer)
    rng = np.random.default_rng(1)
    commands = []
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((40, 8)).astype(np.float32))
        (tmp_path / f"{name}.txt").write_text("".join(f"{name}{j}\n" for j in range(40)))
        commands.append([sys.executable, "-m", "semid.cli.main", "index", "add", str(index),
                         "--items", str(tmp_path / f"{name}.npy"), "--keys", str(tmp_path / f"{name}.txt")])  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]  # fmt: skip
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    keys = set(SemanticIDs.load(index).keys)
    assert len(keys) == 380
    assert {f"a{j}" for j in range(40)} | {f"b{j}" for j in range(40)} <= keys
