"""Plain text files of one entry a line (keys, queries, key<TAB>text), read with one clear error."""

from __future__ import annotations

import os
import re
from pathlib import Path

from semid.errors import SemidError, cannot_read

UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # little- and big-endian byte-order marks


def not_utf8(data: bytes, error: UnicodeDecodeError, named: str) -> SemidError:
    """The one-line error for ``data`` (the file ``named``) that failed to decode as UTF-8: the
    line of the first bad byte, or that the file is UTF-16 (Excel's "Unicode Text" export)."""
    if data.startswith(UTF16_MARKS):
        return SemidError(f"{named} is UTF-16 text (as Excel's \"Unicode Text\" saves); save it as "
                          "UTF-8 (in Excel: \"CSV UTF-8\")")  # fmt: skip
    line = data.count(b"\n", 0, error.start) + 1
    return SemidError(f"{named} line {line} is not UTF-8 text; save it as UTF-8")


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a UTF-8 text file (a BOM skipped); SemidError naming ``what`` and the path if it is missing or
    not UTF-8 (with the line number)."""
    path = Path(path)
    if path.is_dir():
        raise SemidError(f"{what} {path} is a folder; give a text file of one entry a line")
    if not path.is_file():
        raise SemidError(f"{what} {path} not found; check the path")
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise cannot_read(path, what) from None
    try:
        return lines_of(raw.decode("utf-8").removeprefix("\ufeff"))  # a BOM is no content
    except UnicodeDecodeError as e:
        raise not_utf8(raw, e, f"{what} {path}") from None


def lines_of(text: str) -> list[str]:
    """The lines of ``text``, split at line ends (``\\n``, ``\\r\\n`` or an old Mac's ``\\r``)
    only: files of one entry a line and JSON Lines end lines there, while their texts may hold
    U+2028, U+0085 and the other characters at which ``str.splitlines`` splits too."""
    lines = _LINE_END.split(text)
    if lines[-1] == "":
        lines.pop()
    return lines


_LINE_END = re.compile(r"\r\n|\r|\n")
