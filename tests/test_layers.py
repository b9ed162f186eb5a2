"""Shared Transformer layers: the fast table lookup and the attention block's CPU dropout path."""

import torch
import torch.nn.functional as F

from semid.dropout import use_torch_dropout
from semid.layers import SelfAttentionBlock, _attention_with_bit_dropout, causal_bias, gather_rows


def test_gather_rows_matches_embedding_in_values_and_gradients():
    torch.manual_seed(0)
    weight = torch.randn(7, 3, requires_grad=True)
    index = torch.randint(0, 7, (4, 5, 5))
    grad = torch.randn(4, 5, 5, 3)
    F.embedding(index, weight).backward(grad)
    expected = weight.grad.clone()
    weight.grad = None
    out = gather_rows(weight, index)
    out.backward(grad)
    assert out.shape == (4, 5, 5, 3)
    assert torch.equal(out, F.embedding(index, weight))
    assert torch.allclose(weight.grad, expected, atol=1e-5)


def test_attention_with_bit_dropout_is_plain_attention_when_nothing_is_dropped():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 2, 6, 4).unbind(0)
    bias = causal_bias(torch.tensor([[0, 1, 2, 3, -1, -1], [0, 1, 2, 3, 4, 5]])).expand(
        -1, 2, -1, -1
    )
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    # p below 1 / 65536 rounds to a keep-all mask
    assert torch.allclose(_attention_with_bit_dropout(q, k, v, bias, 1e-6), expected, atol=1e-6)


def test_block_drops_attention_weights_in_training_only_and_reproducibly():
    torch.manual_seed(2)
    block = SelfAttentionBlock(dim=8, heads=2, dropout=0.5)
    x = torch.randn(2, 5, 8)
    bias = causal_bias(torch.zeros(2, 5, dtype=torch.long))
    block.eval()
    clean = block(x, bias)
    block.train()
    torch.manual_seed(3)
    a = block(x, bias)
    torch.manual_seed(3)
    b = block(x, bias)
    assert torch.equal(a, b) and not torch.allclose(a, clean)
    use_torch_dropout(block)  # torch's dropout everywhere, attention weights included: still trains
    torch.manual_seed(3)
    c = block(x, bias)
    assert c.shape == a.shape and not torch.equal(c, a)
