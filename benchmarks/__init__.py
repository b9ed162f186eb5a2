"""Benchmarks of quality and speed against baselines; each module runs as ``python -m benchmarks.NAME``
from the repository root and writes its tables to ``benchmarks/results/``."""

from semid.notes import show_on_console

show_on_console()  # the library's notes and summaries show in a benchmark's log, as in a command
