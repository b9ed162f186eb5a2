"""Item or document texts sent with answers (`semid serve`'s ``"texts": true``, `semid predict
--texts`): read by the predictor that checks inputs, from its run's data."""

from __future__ import annotations

from typing import Any

from semid.errors import SemidError


def check_texts(predictor: Any, option: str) -> None:
    """SemidError unless the run has texts to send with answers (read now if not yet); the
    message tells to leave out ``option``, the flag or field that asked for them."""
    if predictor.item_texts([]) is None:
        raise SemidError(
            f"this run has no item texts to send (its data has none); leave out {option}"
        )


def with_texts(predictor: Any, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers, each with its keys' ``"texts"``."""
    return [{**a, "texts": predictor.item_texts(a["keys"])} for a in answers]
