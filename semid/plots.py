"""Codebook-usage and training-curve plots (needs the `plot` extra: matplotlib)."""

from __future__ import annotations

import os

import torch

from semid.atomic import check_output_file, output_file
from semid.errors import SemidError
from semid.ids import SemanticIDs


def _pyplot(path: str | os.PathLike):
    """matplotlib.pyplot on the Agg backend, after checking `path` names a .png file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SemidError("plotting needs matplotlib: pip install 'semid[plot]'") from None
    if not str(path).lower().endswith(".png"):
        raise SemidError(f"--plot {path}: give a .png file name")
    return plt


def check_plot_path(path: str | os.PathLike) -> None:
    """Raise SemidError now, before any long work, unless a plot can be written to ``path``."""
    _pyplot(path)
    check_output_file(path, "--plot")


def _save(plt, fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with output_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def plot_curves(
    panels: dict[str, dict[str, list[float]]], path: str | os.PathLike, columns: int = 4
) -> None:
    """One line chart per panel: panel title -> {line label: value per epoch}, written to a PNG."""
    plt = _pyplot(path)
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels.items(), strict=False):
        for label, values in lines.items():
            ax.plot(range(1, len(values) + 1), values, label=label, linewidth=1)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    _save(plt, fig, path)


def plot_code_usage(ids: SemanticIDs, path: str | os.PathLike) -> None:
    """One bar chart per level: items per code, codes sorted by use; dead codes show as zeros."""
    plt = _pyplot(path)
    stats = ids.stats()["per_level"]
    fig, axes = plt.subplots(1, ids.levels, figsize=(4 * ids.levels, 3), squeeze=False)
    for level, ax in enumerate(axes[0]):
        counts = torch.bincount(ids.codes[:, level], minlength=ids.codebook_sizes[level])
        ax.bar(range(len(counts)), counts.sort(descending=True).values.numpy(), width=1.0)
        s = stats[level]
        ax.set_title(
            f"level {level}: {s['used']}/{s['codebook_size']} used, ppl {s['perplexity']:.0f}",
            fontsize=9,
        )
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("items")
    fig.suptitle(f"{ids.quantizer_spec or 'semantic IDs'}: {len(ids):,} items", fontsize=10)
    _save(plt, fig, path)
