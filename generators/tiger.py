"""TIGER (Rajput et al., 2023): a T5 encoder-decoder reads the semantic IDs of the user's last items
and writes the next item's ID, one code per step under the trie. Built from a ``T5Config``, trained
from scratch (no download).

Encoder input: one hashed user token, then the L codes of each of the last ``max_items`` items
(oldest first). Every level has its own token block (``CodeVocabulary``), after the special
tokens (0 pad / decoder start, 1 eos) and the ``user_buckets`` user tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor
from transformers import T5Config, T5ForConditionalGeneration

from semid.generator import Generator, register_generator
from semid.hf import Seq2SeqStepModel
from semid.vocab import CodeVocabulary

PAD_TOKEN, EOS_TOKEN, NUM_FIXED_SPECIAL = 0, 1, 2
_USER_HASH = 2654435761  # Knuth's multiplicative hash: spreads consecutive user ids over buckets


@dataclass
class TigerConfig:
    """TIGER hyper-parameters; the defaults are a small T5 that trains on 2 CPU cores."""

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


@register_generator("tiger")
class Tiger(Generator):
    """T5ForConditionalGeneration over code tokens; ``forward`` needs history_codes, users and target_codes."""

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

    def encoder_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """input_ids and attention_mask (B, 1 + max_items * L): user token, then history code tokens."""
        codes = batch["history_codes"][:, -self.config.max_items :]  # (B, T, L), -1 on padding
        real = codes[..., 0] >= 0
        used = int(real.sum(1).max()) if real.numel() else 0
        codes, real = (
            codes[:, codes.shape[1] - used :],
            real[:, codes.shape[1] - used :],
        )  # drop all-pad columns
        tokens = self.vocab.codes_to_tokens(codes.clamp(min=0)).masked_fill(
            ~real[..., None], PAD_TOKEN
        )
        user = NUM_FIXED_SPECIAL + (batch["users"] * _USER_HASH) % self.config.user_buckets
        input_ids = torch.cat([user[:, None], rearrange(tokens, "b t l -> b (t l)")], dim=1)
        mask = torch.cat(
            [torch.ones_like(user[:, None]), real.repeat_interleave(codes.shape[2], dim=1).long()],
            1,
        )
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced loss: cross-entropy of each target code within its level's block -> (loss, logits (B, L, V))."""
        target = batch["target_codes"]  # (B, L)
        labels = self.vocab.codes_to_tokens(target)
        out = self.t5(**self.encoder_inputs(batch), labels=labels, return_dict=True)
        logits = [
            out.logits[:, level, self.vocab.level_slice(level)]
            for level in range(self.vocab.levels)
        ]
        return self.level_loss(logits, target), out.logits

    def step_model(self) -> _TigerSteps:
        """Beam-search adapter: encoder once per query, KV cache expanded across beams."""
        return _TigerSteps(self)


class _TigerSteps(Seq2SeqStepModel):
    """Seq2SeqStepModel that first turns a recommendation batch into encoder tokens."""

    def __init__(self, tiger: Tiger) -> None:
        super().__init__(tiger.t5, tiger.vocab)
        self.tiger = tiger

    def start(self, inputs: dict[str, Tensor]):
        """Encode the histories and score the first level -> logits (B, V_0), state."""
        return super().start(self.tiger.encoder_inputs(inputs))
