"""One training loop on `accelerate` shared by every generator.

    config = TrainConfig(max_epochs=20, lr=1e-3, metric="ndcg@10")
    result = Trainer(model, train_set, config, "runs/x/train", evaluate=validate).fit()
    # model(batch) -> (loss, logits); validate(model) -> {"ndcg@10": ..., ...}

Several processes or GPUs: `accelerate launch --num_processes N script.py`, no code change.
"""

from __future__ import annotations

from semid.lazy import lazy_getattr

# each name loads its module on first use: the CLI reads TrainConfig's defaults for its --help
# without importing accelerate and torch
_MODULE_BY_NAME = {
    "TrainConfig": "semid.training.config",
    "TrainConfigError": "semid.training.config",
    "TrainResult": "semid.training.config",
    "Trainer": "semid.training.trainer",
    "train_model": "semid.training.fit",
}
__all__ = sorted(_MODULE_BY_NAME)
__getattr__ = lazy_getattr(__name__, _MODULE_BY_NAME)
