"""Early stopping: stops after `patience` epochs without improvement and restores the best weights."""

import pytest
import torch
from torch import nn

from semid.early_stopping import EarlyStopping


def test_stops_after_patience_and_restores_the_best_epoch():
    model = nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=3)
    stops = []
    for epoch, value in enumerate([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.5]):
        model.weight.data.fill_(epoch)
        stops.append(stopper.update(value, model))
        if stops[-1]:
            break
    assert stops == [False, False, False, False, False, True]
    assert stopper.best == 1.0 and stopper.best_epoch == 2 and stopper.stopped_early
    stopper.restore(model)
    assert model.weight.item() == 2.0


def test_no_patience_records_but_never_stops():
    stopper = EarlyStopping(patience=None)
    assert not any(stopper.update(v) for v in [1.0, 2.0, 3.0, 4.0])
    assert stopper.history == [1.0, 2.0, 3.0, 4.0] and not stopper.stopped_early
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)


def test_tiny_gains_do_not_count_as_improvement():
    stopper = EarlyStopping(patience=2, min_delta=1e-2)
    assert not stopper.update(100.0)
    assert not stopper.update(99.5)  # relative: needs < 99.0
    assert stopper.update(99.2)
    assert stopper.best_epoch == 0 and torch.isfinite(torch.tensor(stopper.best))
