"""One training loop on `accelerate` shared by every generator.

    config = TrainConfig(max_epochs=20, lr=1e-3, metric="ndcg@10")
    result = Trainer(model, train_set, config, "runs/x/train", evaluate=validate).fit()
    # model(batch) -> (loss, logits); validate(model) -> {"ndcg@10": ..., ...}

Several processes or GPUs: `accelerate launch --num_processes N script.py`, no code change.
"""

from semid.training.config import TrainConfig, TrainConfigError, TrainResult
from semid.training.fit import train_model
from semid.training.trainer import Trainer

__all__ = ["TrainConfig", "TrainConfigError", "TrainResult", "Trainer", "train_model"]
