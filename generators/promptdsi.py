"""PromptDSI (Huynh et al., 2024): a frozen pretrained encoder with a topic-aware prompt pool,
feeding a small decoder trained from scratch that writes the document's semantic ID under the trie.

The encoder (the packaged MiniLM by default, loaded with ``transformers``) never trains. Prompts
enter before encoder layer ``prompt_layer``: the layers below do not see them, so their output is
computed once per text and can be cached (``lower_states``); with ``prompt_layer=0`` the prompts
are prepended to the embedding output, i.e. to the encoder's input. Each input picks ``top_n``
prompts by cosine between its mean-pooled lower states (already computed: no extra encoder pass)
and fixed topic keys (k-means centroids of the documents, so keys cannot collapse). Incremental
indexing adds a new prompt session with keys from the new documents and trains only its prompts.

The frozen encoder is not part of ``state_dict``: it is loaded from ``encoder_path`` (or rebuilt
from ``encoder_config`` and ``encoder_seed``), so saved models hold only what was trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from semid.errors import SemidError
from semid.generator import Generator, register_generator
from semid.vocab import CodeVocabulary

BOS_TOKEN = 0


@dataclass
class PromptDSIConfig:
    """PromptDSI hyper-parameters; the defaults fit the packaged MiniLM and train on a CPU."""

    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    encoder_path: str | None = None  # local HF folder; None: the packaged all-MiniLM-L6-v2
    encoder_config: dict | None = None  # BertConfig fields: a random frozen encoder (tests) instead
    encoder_seed: int = 0  # seeds the random encoder so it is rebuilt identically on load
    max_length: int = 128  # tokens per text, truncated
    prompt_layer: int = 0  # prompts enter before this encoder layer (0: at the input embeddings)
    prompt_length: int = 4  # tokens per prompt
    pool_sizes: list[int] = field(
        default_factory=lambda: [16]
    )  # prompts per session (0: initial corpus)
    top_n: int = 2  # prompts selected per input
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int = 1024
    dropout: float = 0.1


def _heads(x: Tensor, h: int) -> Tensor:
    return rearrange(x, "b t (h d) -> b h t d", h=h)


class _DecoderLayer(nn.Module):
    """Pre-norm decoder layer whose cross-attention K/V are computed once per query (``memory_kv``)."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.p = heads, dropout
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.self_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.cross_q, self.cross_kv, self.cross_out = (
            nn.Linear(d, d),
            nn.Linear(d, 2 * d),
            nn.Linear(d, d),
        )
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values (B, h, S, d_h) of the encoder memory (B, S, d)."""
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], memory_mask: Tensor) -> Tensor:
        """x (R, T, d) causal over T, attending to memory K/V with mask (R, S) True = real -> (R, T, d)."""
        p = self.p if self.training else 0.0
        q, k, v = (_heads(t, self.heads) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        x = x + self.drop(self.self_out(rearrange(a, "b h t d -> b t (h d)")))
        q = _heads(self.cross_q(self.norm2(x)), self.heads)
        a = F.scaled_dot_product_attention(
            q, *kv, attn_mask=memory_mask[:, None, None, :], dropout_p=p
        )
        x = x + self.drop(self.cross_out(rearrange(a, "b h t d -> b t (h d)")))
        return x + self.drop(self.ff(self.norm3(x)))


def _load_encoder(config: PromptDSIConfig) -> nn.Module:
    from transformers import AutoModel, BertConfig, BertModel

    if config.encoder_config is not None:
        with torch.random.fork_rng():
            torch.manual_seed(config.encoder_seed)
            return BertModel(BertConfig(**config.encoder_config), add_pooling_layer=False)
    path = config.encoder_path or str(_default_encoder_path())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return AutoModel.from_pretrained(path, local_files_only=True)
    except OSError as e:
        raise SemidError(
            f"cannot load the PromptDSI encoder from {path}: {e}; pass a local model folder"
        ) from None


def _default_encoder_path():
    from semid.encoders import default_model_path

    return default_model_path()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, T, H) over positions where mask (B, T) is 1 -> (B, H)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


@register_generator("promptdsi")
class PromptDSI(Generator):
    """Frozen encoder + topic-keyed prompt pool + small code decoder. ``forward`` needs
    ``hidden`` (B, T, H) lower states (or ``input_ids``), ``attention_mask`` (B, T), ``target_codes`` (B, L)."""

    config_class = PromptDSIConfig

    def __init__(self, config: PromptDSIConfig) -> None:
        super().__init__(config)
        encoder = _load_encoder(config).eval().requires_grad_(False)
        self._frozen = [encoder]  # a list hides it from state_dict and parameters(); see _apply
        width = encoder.config.hidden_size
        if not 0 <= config.prompt_layer < encoder.config.num_hidden_layers:
            raise SemidError(
                f"prompt_layer={config.prompt_layer} but the encoder has {encoder.config.num_hidden_layers} layers; "
                f"pick 0..{encoder.config.num_hidden_layers - 1}"
            )
        if not 1 <= config.top_n <= sum(config.pool_sizes):
            raise SemidError(
                f"top_n={config.top_n} must be between 1 and the pool size {sum(config.pool_sizes)}"
            )
        scale = float(encoder.embeddings.word_embeddings.weight.std())
        self.prompts = nn.ParameterList(
            [
                nn.Parameter(torch.randn(m, config.prompt_length, width) * scale)
                for m in config.pool_sizes
            ]
        )
        self.register_buffer(
            "topic_keys", F.normalize(torch.randn(sum(config.pool_sizes), width), dim=-1)
        )
        self.vocab = CodeVocabulary(config.codebook_sizes, num_special=1)
        d = config.d_model
        self.memory_proj = nn.Sequential(nn.Linear(width, d), nn.LayerNorm(d))
        self.token_emb = nn.Embedding(self.vocab.size, d)
        self.pos_emb = nn.Embedding(len(config.codebook_sizes), d)
        self.layers = nn.ModuleList(
            [
                _DecoderLayer(d, config.num_heads, config.d_ff, config.dropout)
                for _ in range(config.num_layers)
            ]
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.vocab.size)

    # ------------------------------------------------------------ frozen encoder
    @property
    def encoder(self) -> nn.Module:
        """The frozen pretrained encoder (not trained, not saved)."""
        return self._frozen[0]

    def _apply(self, fn, recurse: bool = True):  # .to(), .half(), ... also reach the hidden encoder
        super()._apply(fn, recurse)
        self._frozen[0]._apply(fn)
        return self

    def train(self, mode: bool = True) -> PromptDSI:
        """Train mode for prompts and decoder; the encoder stays in eval mode (cached states stay exact)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def tokenizer(self):
        """The encoder's tokenizer (the packaged MiniLM's for a random test encoder)."""
        if not hasattr(self, "_tokenizer"):
            from transformers import AutoTokenizer

            path = self.config.encoder_path or str(_default_encoder_path())
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """input_ids and attention_mask (B, T), truncated to max_length."""
        enc = self.tokenizer()(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        device = self.head.weight.device
        return {
            "input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device),
        }

    def _run_layers(self, hidden: Tensor, mask: Tensor, layers: Any) -> Tensor:
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in layers:
            hidden = layer(hidden, attention_mask=additive)
        return hidden

    @torch.no_grad()
    def lower_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Encoder states (B, T, H) entering layer prompt_layer: prompt-free, so cacheable per text."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        return self._run_layers(
            hidden, attention_mask, self.encoder.encoder.layer[: self.config.prompt_layer]
        )

    @torch.no_grad()
    def text_embedding(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's own sentence embedding (B, H): no prompts, mean-pooled, L2-normalised."""
        out = self._run_layers(
            hidden, attention_mask, self.encoder.encoder.layer[self.config.prompt_layer :]
        )
        return F.normalize(masked_mean(out, attention_mask), dim=-1)

    # ------------------------------------------------------------ prompt pool
    def query_keys(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Matching vectors (B, H): mean-pooled lower states, L2-normalised (no extra encoder pass)."""
        return F.normalize(masked_mean(hidden.float(), attention_mask), dim=-1)

    def select_prompts(self, query: Tensor) -> Tensor:
        """Indices (B, top_n) of the prompts whose topic keys best match query (B, H), best first."""
        return (query @ self.topic_keys.T).topk(self.config.top_n, dim=-1).indices

    def set_topic_keys_(self, keys: Tensor, session: int = 0) -> None:
        """Fix the topic keys (M_s, H) of a prompt session (e.g. k-means centroids of its documents)."""
        start = sum(self.config.pool_sizes[:session])
        size = self.config.pool_sizes[session]
        if keys.shape != (size, self.topic_keys.shape[1]):
            raise SemidError(
                f"session {session} needs keys of shape ({size}, {self.topic_keys.shape[1]}), got {tuple(keys.shape)}"
            )
        self.topic_keys[start : start + size] = F.normalize(keys.float(), dim=-1).to(
            self.topic_keys.device
        )

    def add_prompt_session_(self, keys: Tensor) -> int:
        """Add prompts keyed by keys (M, H); each starts as a copy of the prompt of its nearest old key.
        Returns the new session's number."""
        keys = F.normalize(keys.float().to(self.topic_keys.device), dim=-1)
        nearest = (keys @ self.topic_keys.T).argmax(dim=-1)
        init = torch.cat(list(self.prompts))[nearest].detach().clone()
        self.prompts.append(nn.Parameter(init))
        self.topic_keys = torch.cat([self.topic_keys, keys])
        self.config.pool_sizes.append(len(keys))
        return len(self.prompts) - 1

    def train_only_session_(self, session: int) -> None:
        """Freeze every parameter except the prompts of ``session`` (incremental indexing)."""
        self.requires_grad_(False)
        self.prompts[session].requires_grad_(True)

    # ------------------------------------------------------------ encoder with prompts, decoder
    def encode(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Memory (B, S, d) and its mask (B, S) bool: prompts + upper encoder layers, projected."""
        mask = inputs["attention_mask"]
        hidden = inputs.get("hidden")
        if hidden is None:
            hidden = self.lower_states(inputs["input_ids"], mask)
        hidden = hidden.to(self.head.weight.dtype)
        chosen = torch.cat(list(self.prompts))[self.select_prompts(self.query_keys(hidden, mask))]
        prompts = rearrange(chosen, "b n p h -> b (n p) h")
        mask = torch.cat([mask.new_ones(prompts.shape[:2]), mask], dim=1)
        layers = self.encoder.encoder.layer[self.config.prompt_layer :]
        out = self._run_layers(torch.cat([prompts, hidden], dim=1), mask, layers)
        return self.memory_proj(out), mask.bool()

    def decode(
        self, tokens: Tensor, kvs: list[tuple[Tensor, Tensor]], memory_mask: Tensor
    ) -> Tensor:
        """Decoder outputs (R, T, vocab) for token prefixes (R, T) starting with BOS."""
        x = self.token_emb(tokens) + self.pos_emb.weight[: tokens.shape[1]]
        for layer, kv in zip(self.layers, kvs, strict=True):
            x = layer(x, kv, memory_mask)
        return self.head(self.norm(x))

    def memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer cross-attention K/V of the memory."""
        return [layer.memory_kv(memory) for layer in self.layers]

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced loss, mean cross-entropy per level within its block -> (loss, logits (B, L, V))."""
        target = batch["target_codes"]
        memory, mask = self.encode(batch)
        tokens = self.vocab.codes_to_tokens(target)
        bos = torch.full_like(tokens[:, :1], BOS_TOKEN)
        logits = self.decode(torch.cat([bos, tokens[:, :-1]], dim=1), self.memory_kv(memory), mask)
        losses = [
            F.cross_entropy(logits[:, lv, self.vocab.level_slice(lv)].float(), target[:, lv])
            for lv in range(self.vocab.levels)
        ]
        return torch.stack(losses).mean(), logits

    def step_model(self) -> _PromptDSISteps:
        """Beam-search adapter: encode and cross-attention K/V once per query, prefixes per beam."""
        return _PromptDSISteps(self)


@dataclass
class _State:
    kvs: list[tuple[Tensor, Tensor]]  # per layer (R, h, S, d_h)
    memory_mask: Tensor  # (R, S)
    tokens: Tensor  # (R, t) BOS + codes so far
    query: Tensor  # (R,) query of each row


class _PromptDSISteps:
    """StepModel over PromptDSI; IDs are a few levels long, so each step re-reads the short prefix."""

    def __init__(self, model: PromptDSI) -> None:
        self.model = model

    @torch.no_grad()
    def start(self, inputs: dict[str, Tensor]) -> tuple[Tensor, _State]:
        """Encode B queries -> first-level logits (B, V_0), state."""
        memory, mask = self.model.encode(inputs)
        b = memory.shape[0]
        tokens = torch.full((b, 1), BOS_TOKEN, dtype=torch.long, device=memory.device)
        state = _State(
            self.model.memory_kv(memory), mask, tokens, torch.arange(b, device=memory.device)
        )
        return self._logits(state, 0), state

    @torch.no_grad()
    def step(self, state: _State, codes: Tensor, level: int) -> tuple[Tensor, _State]:
        """Append codes (R,) of level - 1 -> logits (R, V_level)."""
        token = codes.long() + self.model.vocab.level_slice(level - 1).start
        state.tokens = torch.cat([state.tokens, token[:, None]], dim=1)
        return self._logits(state, level), state

    def _logits(self, state: _State, level: int) -> Tensor:
        out = self.model.decode(state.tokens, state.kvs, state.memory_mask)
        return out[:, -1, self.model.vocab.level_slice(level)].float()

    def select(self, state: _State, rows: Tensor) -> _State:
        """New row i = old row rows[i]; K/V are copied only when the rows' queries change."""
        query = state.query[rows]
        if not torch.equal(query, state.query):
            state.kvs = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in state.kvs]
            state.memory_mask = state.memory_mask.index_select(0, rows)
        state.tokens, state.query = state.tokens[rows], query
        return state


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["PromptDSI", "PromptDSIConfig", "count_parameters", "masked_mean"]
