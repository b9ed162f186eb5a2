"""Defaults the engine and the tasks share, in a module that imports nothing heavy, so that the
CLI can show them in ``--help`` without loading torch."""

from __future__ import annotations

AUTO = "auto"  # a quantizer spec: sized to the number of items (semid.indexing.auto_spec)
DEFAULT_NUM_BEAMS = 20  # beams of a top-k search (at least k)
COLLISION_STRATEGIES = ("extra-level", "popularity", "reassign")  # semid.collisions implements each
