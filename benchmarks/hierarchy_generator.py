"""The parent-prediction model of the hierarchy benchmark: child ID -> parent ID.

A small GRU generator learns child ID -> parent ID on the training edges, stops early on the
teacher-forced loss of the validation edges, and is scored on held-out children by trie-constrained
beam search (Recall@1/10, MRR@10). Both sides of a comparison get the same model and budget.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semid.beam_search import constrained_beam_search
from semid.early_stopping import EarlyStopping
from semid.ids import SemanticIDs
from semid.metrics import compute_metrics


class ParentPredictor(nn.Module):
    """Child ID (B, L) -> parent ID, one level per step: a context MLP then a GRU over parent codes."""

    def __init__(self, sizes: list[int], dim: int = 128) -> None:
        super().__init__()
        self.sizes = sizes
        self.src = nn.ModuleList(nn.Embedding(k, dim) for k in sizes)
        self.context = nn.Sequential(
            nn.Linear(len(sizes) * dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.prev = nn.ModuleList(nn.Embedding(k, dim) for k in sizes[:-1])
        self.cell = nn.GRUCell(dim, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, k) for k in sizes)

    def start(self, child: Tensor) -> tuple[Tensor, Tensor]:
        """First-level logits (B, V_0) and the hidden state (B, dim) for child IDs (B, L)."""
        h = self.context(torch.cat([emb(child[:, i]) for i, emb in enumerate(self.src)], -1))
        return self.heads[0](h), h

    def step(self, state: Tensor, codes: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Logits (R, V_level) after feeding the codes (R,) chosen at level - 1."""
        h = self.cell(self.prev[level - 1](codes), state)
        return self.heads[level](h), h

    def select(self, state: Tensor, rows: Tensor) -> Tensor:
        """State rows reordered or expanded: (R_new, dim)."""
        return state[rows]

    def loss(self, child: Tensor, parent: Tensor) -> Tensor:
        """Teacher-forced cross-entropy summed over levels for ID pairs (B, L)."""
        logits, h = self.start(child)
        total = nn.functional.cross_entropy(logits, parent[:, 0])
        for level in range(1, len(self.sizes)):
            logits, h = self.step(h, parent[:, level - 1], level)
            total = total + nn.functional.cross_entropy(logits, parent[:, level])
        return total


def train_generator(
    ids: SemanticIDs,
    train_edges: Tensor,
    val_edges: Tensor,
    cfg: dict,
    seed: int,
) -> tuple[ParentPredictor, EarlyStopping, list[float]]:
    """Fit a ParentPredictor on (child, parent) rows until the validation loss stops improving.

    cfg: ``g_epochs`` (maximum), ``g_batch``, ``g_patience``. Returns the model at its best
    validation epoch, the stopper (validation curve) and the training-loss curve."""
    torch.manual_seed(seed)
    model = ParentPredictor(ids.codebook_sizes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    child, parent = ids.codes[train_edges[:, 0]], ids.codes[train_edges[:, 1]]
    val_child, val_parent = ids.codes[val_edges[:, 0]], ids.codes[val_edges[:, 1]]
    gen = torch.Generator().manual_seed(seed)
    stopper, train_curve = EarlyStopping(cfg["g_patience"]), []
    for _ in range(cfg["g_epochs"]):
        model.train()
        total, steps = 0.0, 0
        for idx in torch.randperm(len(child), generator=gen).split(cfg["g_batch"]):
            loss = model.loss(child[idx], parent[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        train_curve.append(total / steps)
        model.eval()
        with torch.no_grad():
            val = sum(
                model.loss(val_child[i], val_parent[i]).item() * len(i)
                for i in torch.arange(len(val_child)).split(4096)
            ) / len(val_child)
        if stopper.update(val, model):
            break
    stopper.restore(model)
    model.eval()
    return model, stopper, train_curve


@torch.no_grad()
def parent_metrics(
    model: ParentPredictor, ids: SemanticIDs, children: Tensor, parents: Tensor
) -> dict[str, float]:
    """Recall@1/10 and MRR@10 of beam search (10 beams) for children (T,) with parents (T, P), -1 padded."""
    trie = ids.trie()
    ranked = []
    for rows in children.split(1024):
        out = constrained_beam_search(model, ids.codes[rows], trie, num_beams=10, top_k=10)
        ranked.append(ids.rows_of_codes(out.codes))
    metrics = compute_metrics(
        torch.cat(ranked),
        parents,
        ks=(1, 10),
        names=("recall", "mrr"),
    )
    return {k: metrics[k] for k in ("recall@1", "recall@10", "mrr@10")}
