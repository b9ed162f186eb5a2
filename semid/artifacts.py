"""Reading artifact folders: the files are there and the format is one this semid understands."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semid.errors import SemidError


def read_checked_config(
    path: str | os.PathLike, needed: Sequence[str], kind: str, fix: str, format_version: int
) -> dict[str, Any]:
    """config.json of an artifact folder, after checking `needed` files exist and the format is
    not newer than `format_version`; otherwise a SemidError naming `kind` and the `fix`."""
    path = Path(path)
    if not path.is_dir() or any(not (path / name).is_file() for name in needed):
        raise SemidError(f"{path} is not a {kind} (needs {', '.join(needed)}); {fix}")
    config = json.loads((path / "config.json").read_text())
    if config.get("format_version", 0) > format_version:
        raise SemidError(
            f"{path} was written by a newer semid (format {config['format_version']}); upgrade semid"
        )
    return config


def parse_json_object(text: str, flag: str, example: str) -> dict[str, Any]:
    """A command-line JSON object such as ``--model-config '{"d_model": 64}'``, or a one-line error."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SemidError(f"{flag} is not valid JSON ({e.msg}); pass e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise SemidError(f"{flag} must be a JSON object, e.g. '{example}'")
    return value
