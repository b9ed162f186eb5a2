"""The trainer hands the C heap's free pages back to the system (semid.training.heap): a long
training's resident memory grew by glibc's heap fragmentation until the out-of-memory killer took it."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
from _two_process_train import make_dataset, make_model
from test_training import tiny_config

from semid.training import Trainer, heap
from semid.training.heap import HeapTrimmer

GLIBC = platform.libc_ver()[0] == "glibc"


def test_the_heap_is_trimmed_at_most_once_per_interval():
    now, trims = [100.0], []
    trimmer = HeapTrimmer(every_s=30, trim=trims.append, clock=lambda: now[0])
    done = []
    for t in (110, 129.9, 130, 131, 159, 160.5, 500):
        now[0] = t
        done.append(trimmer.maybe_trim())
    assert done == [False, False, True, False, False, True, True]
    assert trims == [0, 0, 0]  # malloc_trim(0): every free page, keeping no padding


def test_without_malloc_trim_nothing_is_trimmed(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    trimmer = HeapTrimmer(every_s=0)
    assert not trimmer.available and not trimmer.maybe_trim()


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_a_fragmented_heap_gives_its_free_pages_back():
    """In a fresh process: 1 MB blocks held apart by small ones stay resident when freed (glibc
    keeps them in its heap once it has freed a larger mapped block), until the trimmer runs."""
    script = textwrap.dedent("""
        import os
        from semid.training.heap import HeapTrimmer

        def resident_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

        trimmer = HeapTrimmer(every_s=0)
        big = bytes(8 << 20)
        del big  # freeing a mapped 8 MB block raises glibc's mmap threshold above 1 MB
        blocks, pins = [], []
        for _ in range(200):
            block = bytearray(1 << 20)
            block[::4096] = b"x" * 256  # a write to each page: resident
            blocks.append(block)
            pins.append(bytearray(1024))  # from malloc: keeps the freed blocks below the heap's top
        before = resident_mb()
        del blocks
        freed = resident_mb()
        assert trimmer.maybe_trim()
        print(round(before), round(freed), round(resident_mb()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, freed, trimmed = map(int, out.stdout.split())
    assert freed > before - 50, "glibc returned the blocks by itself: nothing to trim"
    assert trimmed < freed - 150


def test_the_trainer_offers_a_trim_after_each_optimizer_step(tmp_path, monkeypatch):
    offers = []
    monkeypatch.setattr(HeapTrimmer, "maybe_trim", lambda self: offers.append(1) or False)
    result = Trainer(make_model(), make_dataset(60), tiny_config(), tmp_path).fit()
    assert result.steps == 24 and len(offers) == 24
