"""TIGER (Rajput et al., 2023): a T5 encoder-decoder reads the semantic IDs of the user's last items
and writes the next item's ID, one code per step under the trie. Built from a ``T5Config``, trained
from scratch (no download).

Encoder input: one hashed user token, then the L codes of each of the last ``max_items`` items
(oldest first). Every level has its own token block (``CodeVocabulary``), after the special
tokens (0 pad / decoder start, 1 eos) and the ``user_buckets`` user tokens.

Causal encoder (``causal``, the default): each history token attends to the user token and to the
tokens of its own item and the ``max_items - 1`` items before it, never to later items. Encoding a
whole window once then gives, at every item t, the state the encoder would give a history ending
at t, so one encoder pass and one decoder pass (the L-token ID of every target laid side by side,
each block attending to its own tokens and to the encoder tokens up to its item) train on all T
targets of a window (``train_format = "sequence"``) instead of one encoder pass per target. Windows
longer than ``max_items`` are cut into chunks of ``max_items`` items, so no target reads more than
search does. The user token sits right before the first real item, so relative positions do not
depend on padding.
Search is unchanged: encode the last ``max_items`` items (with the same causal mask), then beam
search over the step model. ``causal=False`` is TIGER's bidirectional encoder, one target per pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from semid.dropout import use_bit_dropout
from semid.errors import SemidError
from semid.generator import Generator, register_generator
from semid.hf import Seq2SeqStepModel
from semid.vocab import CodeVocabulary

PAD_TOKEN, EOS_TOKEN, NUM_FIXED_SPECIAL = 0, 1, 2
_USER_HASH = 2654435761  # Knuth's multiplicative hash: spreads consecutive user ids over buckets


@dataclass
class TigerConfig:
    """TIGER hyper-parameters; the defaults are a small T5 that trains on 2 CPU cores."""

    LIMITS: ClassVar = {**dict.fromkeys(("max_items", "user_buckets", "d_model", "d_ff", "d_kv", "num_heads",
                                         "num_layers"), "count"),
                        "dropout": "probability", "attention_dropout": "probability"}  # fmt: skip

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    max_items: int = 20  # history items read; the TIGER paper also caps sequences at 20 items
    user_buckets: int = 2000  # hashed user tokens, as in TIGER
    d_model: int = 128
    d_ff: int = 512
    d_kv: int = 32
    num_heads: int = 4
    num_layers: int = 2  # encoder; the decoder has as many
    dropout: float = 0.1
    trie_softmax: bool = (
        True  # softmax over the codes the index allows after each prefix (see Generator.use_trie)
    )
    # dropout on attention probabilities; None: ``dropout``, as T5 does. Off by default: its random
    # numbers, (B, heads, S, S) per attention, cost 45% of a causal training step on 2 CPU cores
    # (benchmarks/results/tiger-throughput.md); it only acts in training
    attention_dropout: float | None = 0.0
    # True: causal encoder, one pass trains on every target of a window (see the module docstring);
    # False: TIGER's bidirectional encoder (models saved before this field existed need False)
    causal: bool = True


@register_generator("tiger")
class Tiger(Generator):
    """T5ForConditionalGeneration over code tokens.

    ``forward`` takes whole windows (``history_codes``, ``users``, ``next_codes``; causal models) or
    one target per example (``history_codes``, ``users``, ``target_codes``)."""

    config_class = TigerConfig

    def __init__(self, config: TigerConfig) -> None:
        super().__init__(config)
        self.vocab = CodeVocabulary(
            config.codebook_sizes, num_special=NUM_FIXED_SPECIAL + config.user_buckets
        )
        t5 = T5Config(
            vocab_size=self.vocab.size,
            d_model=config.d_model,
            d_ff=config.d_ff,
            d_kv=config.d_kv,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            num_decoder_layers=config.num_layers,
            dropout_rate=config.dropout,
            feed_forward_proj="relu",
            pad_token_id=PAD_TOKEN,
            eos_token_id=EOS_TOKEN,
            decoder_start_token_id=PAD_TOKEN,
        )
        self.t5 = T5ForConditionalGeneration(t5)
        # the same drop rate (to 1/65536), 2x cheaper random numbers on the CPU
        use_bit_dropout(self.t5)
        if config.attention_dropout is not None:
            for module in self.t5.modules():
                if isinstance(module, T5Attention):
                    module.dropout = config.attention_dropout  # read by T5Attention.forward

    @property
    def train_format(self) -> str:
        """'sequence' (whole windows, SequenceDataset) for the causal encoder, else 'target'."""
        return "sequence" if self.config.causal else "target"

    @property
    def train_window(self) -> int | None:
        """Targets per training window: ``max_items`` for the causal encoder, whose chunks never
        read further back (a longer window would be cut into chunks, one of them half padding);
        None (the task's history length) otherwise."""
        return self.config.max_items if self.config.causal else None

    def encoder_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """input_ids and attention_mask (B, 1 + max_items * L): user token, then history code tokens.

        Causal models also get ``encoder_mask`` (B, 1, S, S) bool, True where a token may attend."""
        return self._layout(batch["history_codes"][:, -self.config.max_items :], batch["users"])

    def _layout(self, codes: Tensor, users: Tensor) -> dict[str, Tensor]:
        """Encoder tokens of histories codes (B, T, L) (-1 on padding), all-padding columns dropped;
        ``item_of_token`` (B, S) is each token's history column (-1 for the user token)."""
        real = codes[..., 0] >= 0
        used = int(real.sum(1).max()) if real.numel() else 0
        codes, real = codes[:, codes.shape[1] - used :], real[:, codes.shape[1] - used :]
        levels = codes.shape[2]
        tokens = self.vocab.codes_to_tokens(codes.clamp(min=0)).masked_fill(
            ~real[..., None], PAD_TOKEN
        )
        user = NUM_FIXED_SPECIAL + (users * _USER_HASH) % self.config.user_buckets
        item_mask = real.repeat_interleave(levels, dim=1)  # (B, T * L)
        if not self.config.causal:  # TIGER's layout: the user token first, then left padding
            input_ids = torch.cat([user[:, None], rearrange(tokens, "b t l -> b (t l)")], dim=1)
            mask = torch.cat([torch.ones_like(user[:, None]), item_mask.long()], 1)
            return {"input_ids": input_ids, "attention_mask": mask}
        pad = tokens.new_full((len(users), 1), PAD_TOKEN)
        input_ids = torch.cat([pad, rearrange(tokens, "b t l -> b (t l)")], dim=1)  # (B, S)
        user_pos = (~item_mask).sum(1, keepdim=True)  # the padding slot just before the first item
        input_ids = input_ids.scatter(1, user_pos, user[:, None])
        pos = torch.arange(input_ids.shape[1], device=codes.device)
        is_user = pos == user_pos  # (B, S)
        mask = torch.cat([torch.zeros_like(user_pos, dtype=torch.bool), item_mask], 1) | is_user
        item = torch.where(is_user, -1, (pos - 1).div(levels, rounding_mode="floor"))  # (B, S)
        visible = self._visible(item, is_user, mask)  # (B, S, S)
        return {
            "input_ids": input_ids,
            "attention_mask": mask.long(),
            "encoder_mask": visible[:, None],
            "item_of_token": item,
            "is_user": is_user,
        }

    def _visible(self, query_item: Tensor, is_user: Tensor, real: Tensor) -> Tensor:
        """bool (B, Q, S): whether a query at history column query_item (B, Q) may attend to each
        encoder token: the user token, and real tokens of columns (query_item - max_items, query_item]."""
        s = real.shape[1]
        levels = len(self.config.codebook_sizes)
        key_item = (torch.arange(s, device=real.device) - 1).div(levels, rounding_mode="floor")
        q = query_item[:, :, None]
        window = (key_item <= q) & (key_item > q - self.config.max_items)
        return real[:, None, :] & (is_user[:, None, :] | window)

    def encode(self, inputs: dict[str, Tensor]) -> Tensor:
        """Encoder outputs (B, S, D) of ``encoder_inputs``, causal or not."""
        mask = inputs.get("encoder_mask", inputs["attention_mask"])
        return self.t5.get_encoder()(
            input_ids=inputs["input_ids"], attention_mask=mask
        ).last_hidden_state

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced cross-entropy of each target code within its level's block -> (loss,
        level-0 logits (R, V_0)); whole windows when the batch has ``next_codes`` and the encoder is
        causal, else one target (``target_codes``) per example."""
        if "next_codes" in batch and self.config.causal:
            return self._forward_windows(batch)
        if "target_codes" not in batch:
            raise SemidError(
                "a TIGER batch needs target_codes (one target per example), or next_codes with "
                "causal=True; use SequenceDataset batches for causal models"
            )
        inputs = self.encoder_inputs(batch)
        target = batch["target_codes"]  # (B, L)
        hidden = self.encode(inputs)
        start = torch.full_like(target[:, :1], PAD_TOKEN)
        decoder_ids = torch.cat([start, self.vocab.codes_to_tokens(target)[:, :-1]], 1)
        out = self._decode(decoder_ids, hidden, inputs["attention_mask"].bool()[:, None, None, :])
        return self._loss(out, target)

    def _forward_windows(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One encoder pass and one decoder pass over windows: history_codes, next_codes (B, T, L)."""
        history, nxt, users = self._chunks(
            batch["history_codes"], batch["next_codes"], batch["users"]
        )
        inputs = self._layout(history, users)
        t = (inputs["input_ids"].shape[1] - 1) // history.shape[2]  # columns kept by _layout
        history, nxt = history[:, history.shape[1] - t :], nxt[:, nxt.shape[1] - t :]
        real = (nxt[..., 0] >= 0) & (history[..., 0] >= 0)  # (B, T) targets with a history
        levels = nxt.shape[2]
        hidden = self.encode(inputs)
        # decoder: the L-token teacher-forced inputs of every target side by side, (B, T * L)
        tokens = self.vocab.codes_to_tokens(nxt.clamp(min=0))
        start = torch.full_like(tokens[..., :1], PAD_TOKEN)
        decoder_ids = rearrange(torch.cat([start, tokens[..., :-1]], -1), "b t l -> b (t l)")
        block = torch.arange(t * levels, device=nxt.device).div(levels, rounding_mode="floor")
        cross = self._visible(
            block.expand(len(nxt), -1), inputs["is_user"], inputs["attention_mask"].bool()
        )  # target t reads the encoder up to its history's last item, column t
        out = self._decode(decoder_ids, hidden, cross[:, None], blocks=block)
        out = rearrange(out, "b (t l) d -> b t l d", l=levels)[real]  # (R, L, D)
        return self._loss(out, nxt[real])

    def _chunks(self, history: Tensor, nxt: Tensor, users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Windows (B, T, L) cut from the right into chunks of ``max_items`` columns (B * n, max_items, L),
        chunks without a target dropped: a target reads at most the ``max_items`` items search reads,
        and attention costs (max_items L)^2 per chunk instead of (T L)^2 per window."""
        m = self.config.max_items
        if history.shape[1] <= m:
            return history, nxt, users
        pad = (-history.shape[1]) % m
        history, nxt = (
            torch.nn.functional.pad(x, (0, 0, pad, 0), value=-1) for x in (history, nxt)
        )
        n = history.shape[1] // m
        history, nxt = (rearrange(x, "b (n t) l -> (b n) t l", n=n) for x in (history, nxt))
        users = users.repeat_interleave(n)
        keep = ((nxt[..., 0] >= 0) & (history[..., 0] >= 0)).any(1)
        return history[keep], nxt[keep], users[keep]

    def _decode(
        self, decoder_ids: Tensor, hidden: Tensor, cross: Tensor, blocks: Tensor | None = None
    ) -> Tensor:
        """Decoder outputs (B, Q, D), scaled for the tied output layer; ``blocks`` (Q,) confines
        self-attention to tokens of the same block (one target each), causally."""
        self_mask = None
        if blocks is not None:
            q = torch.arange(len(blocks), device=blocks.device)
            self_mask = (blocks[:, None] == blocks[None, :]) & (q[:, None] >= q[None, :])
            self_mask = self_mask[None, None]  # (1, 1, Q, Q)
        out = self.t5.get_decoder()(
            input_ids=decoder_ids,
            attention_mask=self_mask,
            encoder_hidden_states=hidden,
            encoder_attention_mask=cross,
        ).last_hidden_state
        if self.t5.config.scale_decoder_outputs:
            out = out * self.config.d_model**-0.5
        return out

    def _loss(self, out: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Level loss of decoder outputs (R, L, D) against target codes (R, L)."""
        weight = self.t5.get_output_embeddings().weight
        logits = [
            out[:, level] @ weight[self.vocab.level_slice(level)].T
            for level in range(self.vocab.levels)
        ]
        return self.level_loss(logits, target), logits[0]

    def step_model(self) -> _TigerSteps:
        """Beam-search adapter: encoder once per query, one cross-attention copy per query."""
        return _TigerSteps(self)


class _TigerSteps(Seq2SeqStepModel):
    """Seq2SeqStepModel that first turns a recommendation batch into encoder tokens."""

    def __init__(self, tiger: Tiger) -> None:
        super().__init__(tiger.t5, tiger.vocab)
        self.tiger = tiger

    def encode(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Encode the histories (causally for causal models) -> (B, S, D), padding mask (B, S)."""
        enc = self.tiger.encoder_inputs(inputs)
        return self.tiger.encode(enc), enc["attention_mask"]
