import dataclasses

import pytest
import torch
from conftest import TINY_GENERATORS

from semid.errors import SemidError
from semid.generator import Generator, TrieNormalizedSteps, available_generators, build_generator
from semid.saving import load_state
from semid.trie import PrefixTrie

SIZES = [3, 3, 2]
TINY = TINY_GENERATORS


def catalog():
    """12 unique IDs out of the 18 possible ones."""
    g = torch.Generator().manual_seed(0)
    every = torch.cartesian_prod(*(torch.arange(v) for v in SIZES))
    return every[torch.randperm(len(every), generator=g)[:12]]


def batch_of(codes, b=3, t=4):
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, len(codes), (b, t), generator=g)
    rows[0, :2] = -1  # a left-padded history
    hist = codes[rows.clamp(min=0)].masked_fill((rows < 0)[..., None], -1)
    times = torch.arange(t).repeat(b, 1) * 100
    target = codes[torch.randint(0, len(codes), (b,), generator=g)]
    nxt = codes[torch.randint(0, len(codes), (b, t), generator=g)]
    return {
        "users": torch.arange(b),
        "items": rows,
        "times": times,
        "history_codes": hist,
        "target_codes": target,
        "next_codes": nxt,
    }


def make(name):
    torch.manual_seed(0)
    return build_generator(name, {**TINY[name], "codebook_sizes": SIZES})


def test_registry():
    assert {"tiger", "mmgrec"} <= set(available_generators())
    with pytest.raises(SemidError, match="unknown model 'nope'"):
        build_generator("nope", {})
    with pytest.raises(SemidError, match="tiger config: unknown field 'bogus'"):
        build_generator("tiger", {"codebook_sizes": SIZES, "bogus": 1})


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_returns_loss_and_trains(name):
    model = make(name)
    batch = batch_of(catalog())
    loss, logits = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def exhaustive(model, batch, codes, trie):
    """Score every ID of the catalog by feeding it through the step model: (B, N) summed log-probs."""
    steps = model.step_model()
    if model.config.trie_softmax:
        steps = TrieNormalizedSteps(steps, trie)
    model.eval()
    out = []
    for code in codes:
        logits, state = steps.start(batch)
        total = torch.log_softmax(logits.float(), -1)[:, code[0]]
        for level in range(1, len(SIZES)):
            logits, state = steps.step(state, code[level - 1].repeat(len(total)), level)
            total = total + torch.log_softmax(logits.float(), -1)[:, code[level]]
        out.append(total)
    return torch.stack(out, 1)


@pytest.mark.parametrize("trie_softmax", [True, False])
@pytest.mark.parametrize("name", sorted(TINY))
def test_generate_matches_exhaustive_ranking(name, trie_softmax):
    model, codes = make(name), catalog()
    model.config.trie_softmax = trie_softmax
    trie = PrefixTrie.from_codes(codes, SIZES)
    batch = batch_of(codes)
    got, log_probs = model.generate(batch, trie, num_beams=len(codes), top_k=5)
    assert got.shape == (3, 5, 3) and log_probs.shape == (3, 5)
    assert trie.contains(got.reshape(-1, 3)).all()  # every returned ID is in the index
    scores = exhaustive(model, batch, codes, trie)
    best = scores.topk(5, dim=1)
    assert torch.allclose(log_probs, best.values, atol=1e-4)
    assert torch.equal(got, codes[best.indices])


@pytest.mark.parametrize("name", sorted(TINY))
def test_save_load_round_trip(name, tmp_path):
    model, codes = make(name), catalog()
    model.save_pretrained(tmp_path / "m")
    loaded = Generator.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and dataclasses.asdict(loaded.config) == dataclasses.asdict(
        model.config
    )
    trie = PrefixTrie.from_codes(codes, SIZES)
    batch = batch_of(codes)
    a = model.generate(batch, trie, num_beams=4)
    b = loaded.generate(batch, trie, num_beams=4)
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_trie_must_match_model():
    model = make("mmgrec")
    trie = PrefixTrie.from_codes(catalog(), [3, 3, 3])
    with pytest.raises(SemidError, match="codebook sizes"):
        model.generate(batch_of(catalog()), trie, num_beams=2)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_trie_on_another_device_is_named_with_the_fix(name, monkeypatch):
    """With trie softmax the steps read the trie before the search checked its device: a CPU trie
    and a CUDA model failed inside torch. Stood in for here by a trie that says it is on meta."""
    model, codes = make(name), catalog()
    trie = PrefixTrie.from_codes(codes, SIZES)
    monkeypatch.setattr(PrefixTrie, "device", property(lambda self: torch.device("meta")))
    with pytest.raises(
        SemidError, match=r"trie is on meta but the model is on cpu; pass trie.to\('cpu'\)"
    ):
        model.generate(batch_of(codes), trie, num_beams=2)
    with pytest.raises(SemidError, match="trie is on meta"):
        model.score_codes(batch_of(codes), trie, codes[None, :2].expand(3, -1, -1))


def test_load_rejects_other_architecture(tmp_path):
    make("mmgrec").save_pretrained(tmp_path / "m")
    other = build_generator("mmgrec", {**TINY["mmgrec"], "dim": 8, "codebook_sizes": SIZES})
    with pytest.raises(SemidError, match="does not fit|wrong shape"):
        load_state(other, tmp_path / "m" / "model.safetensors")
    with pytest.raises(SemidError, match="is not a saved model"):
        Generator.from_pretrained(tmp_path / "missing")


def test_trie_softmax_loss_of_a_target_outside_the_trie_is_finite():
    """A target whose code leaves the trie at some level got -inf logits there: an infinite loss."""
    model, codes = make("mmgrec"), catalog()
    model.use_trie(PrefixTrie.from_codes(codes[:6], SIZES))
    every = torch.cartesian_prod(*(torch.arange(v) for v in SIZES))
    outside = every[~(every[:, None] == codes[:6][None]).all(-1).any(-1)]  # 12 IDs not in the trie
    logits = [torch.randn(len(outside), v) for v in SIZES]
    masked = model.mask_to_trie(logits, outside)
    assert torch.isfinite(model.level_loss(logits, outside))
    for level, lg in enumerate(masked):  # the target's own code is never masked
        assert torch.isfinite(lg.gather(1, outside[:, level, None])).all()


def test_trie_softmax_loss_ignores_codes_outside_the_index():
    model, codes = make("mmgrec").eval(), catalog()  # eval: no dropout, so losses compare
    batch = batch_of(codes)
    loss_full, _ = model(batch)
    model.use_trie(PrefixTrie.from_codes(codes, SIZES))
    loss_trie, _ = model(batch)
    assert loss_trie < loss_full  # fewer competing codes per level
    model.config.trie_softmax = False
    assert torch.allclose(model(batch)[0], loss_full)
