"""BitDropout: the drop rate, scaling, gradients, eval mode and seeding of the cheap CPU dropout."""

import pytest
import torch
from torch import nn

from semid.dropout import BitDropout, bit_dropout, keep_mask, use_bit_dropout, use_torch_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_drops_at_the_asked_rate(p):
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([400, 1000]), p)
    # 400k draws: one standard error of the rate is below 0.0008
    assert abs((~mask).float().mean().item() - p) < 0.004


def test_keep_mask_is_independent_across_slices_of_one_word():
    torch.manual_seed(1)
    mask = keep_mask(
        torch.Size([200_000, 4]), 0.5
    ).float()  # the 4 slices of each word side by side
    corr = torch.corrcoef(mask.T)
    assert (corr - torch.eye(4)).abs().max() < 0.01


def test_bit_dropout_scales_kept_elements_and_gradients_follow_the_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = bit_dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)


def test_same_seed_gives_the_same_mask_and_eval_mode_is_identity():
    layer = BitDropout(0.3)
    x = torch.ones(10, 10)
    torch.manual_seed(3)
    a = layer(x)
    torch.manual_seed(3)
    b = layer(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
    layer.eval()
    assert layer(x) is x


def test_edge_probabilities_and_bad_ones():
    x = torch.randn(5, 5)
    assert bit_dropout(x, 0.0) is x
    assert torch.count_nonzero(bit_dropout(x, 1.0)) == 0
    # p that rounds to 65536/65536: its threshold, 32768, does not fit the 16-bit slices (it wrapped
    # to -32768, which kept everything and scaled it by 1 / (1 - p))
    assert torch.count_nonzero(bit_dropout(x, 0.999995)) == 0
    assert not keep_mask(x.shape, 1 - 1e-7).any()
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        BitDropout(1.5)


def test_use_bit_dropout_replaces_every_torch_dropout():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.4)))
    assert use_bit_dropout(net) == 2
    ps = [m.p for m in net.modules() if isinstance(m, BitDropout)]
    assert ps == [0.2, 0.4]
    assert not any(type(m) is nn.Dropout for m in net.modules())
    assert use_torch_dropout(net) == 2  # and back, for comparisons
    assert [m.p for m in net.modules() if type(m) is nn.Dropout] == [0.2, 0.4]
    assert not any(isinstance(m, BitDropout) for m in net.modules())
