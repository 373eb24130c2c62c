"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over a session's recent items, as a plain torch module.

The last ``max_len`` clicks are embedded (item embedding + learned absolute position embedding, left-padded so the
newest click always sits at position ``max_len - 1``), passed through ``layers`` pre-norm blocks (causal multi-head
self-attention, point-wise two-layer FFN, residuals, layer norm, dropout) and a final layer norm; the output at the
newest position scores every item by a dot product with the *shared* item embedding (no separate output table).

Written by hand rather than with ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` so that the recommender's
compression techniques apply to the attention: the q/k/v/out projections are ordinary ``nn.Linear`` modules (found by
type by the quantizer, SVD and magnitude pruning; ``nn.MultiheadAttention`` reads its packed weights directly and is
refused by the quantizer), and heads, FFN units and embedding dims are separate slices that structured pruning can
remove (``unit_groups`` / ``resized``). Differences from the paper, each so that a model keeps its outputs when
structured pruning removes zeroed units: no sqrt(d) scaling of the item embedding (RecBole's SASRec omits it too);
the projection rows of head h are rows h, H+h, 2H+h, ... (head-interleaved), and the layer norms compute their
statistics over ``norm_width`` dims (default ``hidden_size``), so a model whose removed embedding dims were zero
normalises exactly as before.

SessionModel contract (models/base.py): the state of a session is its window of the last ``max_len`` item ids
(-1 = empty); ``advance`` appends a click and encodes the window. ``forward(seq, lengths)`` = ``score`` scores the next
item after right-padded sequences (what the artifacts and the pipeline's reload check call).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from recsys.models.base import UnitGroup, unit_slice

PAD = -1   # empty slot of a session window


class WidthNorm(nn.LayerNorm):
    """LayerNorm whose mean/variance count ``width`` dims (>= the actual ones, the missing ones being zeros).

    With ``width == normalized_shape`` it is ``nn.LayerNorm``. A structurally pruned SASRec keeps the original width,
    so it normalises exactly as the unpruned model whose removed dims were zero (a zero dim adds nothing to the sum
    and (0 - mean)^2 to the squared deviations)."""

    def __init__(self, dim: int, width: int, eps: float = 1e-8) -> None:
        super().__init__(dim, eps=eps)
        self.width = int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        if self.width == d:
            return F.layer_norm(x, (d,), self.weight, self.bias, self.eps)
        mean = x.sum(-1, keepdim=True) / self.width
        var = (((x - mean) ** 2).sum(-1, keepdim=True) + (self.width - d) * mean ** 2) / self.width
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + FFN(LN(x)); attention from nn.Linear projections."""

    def __init__(self, d: int, n_heads: int, head_dim: int, inner: int, norm_width: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.attn_norm, self.ffn_norm = WidthNorm(d, norm_width), WidthNorm(d, norm_width)
        self.q, self.k, self.v = (nn.Linear(d, n_heads * head_dim) for _ in range(3))
        self.out = nn.Linear(n_heads * head_dim, d)
        self.ffn1, self.ffn2 = nn.Linear(d, inner), nn.Linear(inner, d)
        self.dropout = float(dropout)
        self.drop = nn.Dropout(dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape            # row j * H + h of a projection is dim j of head h
        return t.view(b, n, self.head_dim, self.n_heads).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        a = self.attn_norm(x)
        att = F.scaled_dot_product_attention(self._heads(self.q(a)), self._heads(self.k(a)), self._heads(self.v(a)),
                                             attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = att.shape
        x = x + self.drop(self.out(att.permute(0, 2, 3, 1).reshape(b, n, self.head_dim * self.n_heads)))
        return x + self.drop(self.ffn2(self.drop(F.gelu(self.ffn1(self.ffn_norm(x))))))


def _positive(name: str, v: Any, zero_ok: bool = False) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < (0 if zero_ok else 1):
        raise ValueError(f"model.{name} must be {'an integer >= 0' if zero_ok else 'a positive integer'}, got {v!r}")


class SASRec(nn.Module):
    """Self-attentive sequential recommender: item window -> causal transformer -> dot product with item embeddings."""

    family = "session"

    def __init__(self, n_items: int, hidden_size: int = 64, layers: int = 2, n_heads: int = 1, head_dim: int = 0,
                 inner_size: int = 0, max_len: int = 50, dropout: float = 0.2, norm_width: int = 0) -> None:
        super().__init__()
        for name, v in (("n_items", n_items), ("hidden_size", hidden_size), ("layers", layers), ("n_heads", n_heads),
                        ("max_len", max_len)):
            _positive(name, v)
        for name, v in (("head_dim", head_dim), ("inner_size", inner_size), ("norm_width", norm_width)):
            _positive(name, v, zero_ok=True)
        if not head_dim and hidden_size % n_heads:
            raise ValueError(f"model.hidden_size={hidden_size} is not divisible by model.n_heads={n_heads}: "
                             "choose n_heads dividing hidden_size, or set model.head_dim")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if norm_width and norm_width < hidden_size:
            raise ValueError(f"model.norm_width={norm_width} must be 0 or >= model.hidden_size={hidden_size}")
        self.n_items, self.hidden_size, self.layers, self.n_heads = n_items, hidden_size, layers, n_heads
        self.head_dim, self.inner_size = head_dim or hidden_size // n_heads, inner_size or hidden_size
        self.max_len, self.dropout, self.norm_width = max_len, float(dropout), norm_width or hidden_size
        self.item_emb = nn.Embedding(n_items, hidden_size)
        self.pos_emb = nn.Embedding(max_len, hidden_size)
        nn.init.normal_(self.item_emb.weight, 0.0, 0.02)   # BERT/RecBole-style initialisation
        nn.init.normal_(self.pos_emb.weight, 0.0, 0.02)
        self.blocks = nn.ModuleList(Block(hidden_size, n_heads, self.head_dim, self.inner_size, self.norm_width,
                                          dropout) for _ in range(layers))
        self.final_norm = WidthNorm(hidden_size, self.norm_width)
        self.drop = nn.Dropout(dropout)

    # ------------------------------------------------------------------------------------------------ pieces
    def encode(self, window: torch.Tensor) -> torch.Tensor:
        """Output at the newest position of each left-padded window (b, w) of item ids (PAD = empty): (b, d)."""
        valid = window != PAD
        n = window.shape[1]
        pos = torch.arange(self.max_len - n, self.max_len, device=window.device)
        x = self.item_emb(window.clamp(min=0)) + self.pos_emb(pos)[None]
        keep = valid[..., None].to(x.dtype)
        x = self.drop(x) * keep
        causal = torch.ones(n, n, dtype=torch.bool, device=window.device).tril()
        # causal over non-empty slots; every slot also sees itself, so an empty slot's row is finite (and unused)
        allowed = (causal[None] & valid[:, None, :]) | torch.eye(n, dtype=torch.bool, device=window.device)[None]
        for block in self.blocks:
            x = block(x, allowed[:, None]) * keep
        return self.final_norm(x[:, -1])

    def item_scores(self, h: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``items`` (all items when None) for each output row: dot products with the shared item table."""
        w = self.item_emb.weight          # float whatever wraps it (masked, quantized, factorised)
        return h @ (w if items is None else w[items]).T

    def windows(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Left-padded windows of the last min(length, max_len) items of right-padded sequences (b, T)."""
        w = max(1, min(self.max_len, int(lengths.max())))
        idx = lengths[:, None].to(seq.device) - w + torch.arange(w, device=seq.device)[None]
        return torch.where(idx >= 0, seq.gather(1, idx.clamp(min=0)), torch.full_like(idx, PAD))

    @staticmethod
    def _trim(state: torch.Tensor) -> torch.Tensor:
        """The state's columns that hold a click in some row (the empty prefix changes no output)."""
        used = int((state != PAD).sum(1).max()) if state.numel() else 0
        return state[:, state.shape[1] - max(used, 1):]

    # --------------------------------------------------------------------------------------------- interface
    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the next click after each right-padded sequence ``seq`` (b, L) of ``lengths``."""
        return self.item_scores(self.encode(self.windows(seq, lengths)))

    score = forward

    def config(self) -> dict[str, Any]:
        return {"_target_": "recsys.models.sasrec.SASRec", "n_items": self.n_items, "hidden_size": self.hidden_size,
                "layers": self.layers, "n_heads": self.n_heads, "head_dim": self.head_dim,
                "inner_size": self.inner_size, "max_len": self.max_len, "dropout": self.dropout,
                "norm_width": self.norm_width}

    # --------------------------------------------------------------------- session-model contract (models/base.py)
    def init_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.full((batch, self.max_len), PAD, dtype=torch.long, device=device)

    def advance(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one click per session to its window and encode it (only the columns some session uses)."""
        state = torch.cat([state[:, 1:], items[:, None].to(state.dtype)], 1)
        return self.encode(self._trim(state)), state

    def reset_state(self, state: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        """Empty windows where a new session starts (item ids carry no gradient: nothing to detach)."""
        return state.masked_fill(reset[:, None], PAD)

    def keep_state(self, new: torch.Tensor, old: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return torch.where(live[:, None], new, old)

    def serving_state(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A full window of random items: the costliest request (every position attended), so latency is an upper
        bound for sessions of any length."""
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        return torch.randint(0, self.n_items, (batch, self.max_len), generator=g)

    def score_next(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Serving request: a session's new click(s) + its stored window -> (scores over all items, new window)."""
        h, state = self.advance(items, state)
        return self.item_scores(h), state

    # ------------------------------------------------------------------------------------ compression contract
    QUANT_KINDS: ClassVar[tuple[str, ...]] = ("embeddings", "linear")   # item/position tables; q/k/v/out and FFN projections
    STUDENT_KEYS: ClassVar[tuple[str, ...]] = ("hidden_size", "layers", "n_heads", "inner_size", "max_len")
    STUDENT_ALIASES: ClassVar[dict[str, str]] = {"hidden": "hidden_size", "heads": "n_heads"}

    def unit_groups(self) -> list[UnitGroup]:
        """Embedding dim j = column j of the item/position tables and of every residual write (out, ffn2, norms),
        read by the q/k/v and ffn1 columns; head h = rows h + j*H (j < head_dim) of q/k/v, read by the same columns
        of ``out`` (only with n_heads > 1); FFN unit u = row u of ffn1, read by column u of ffn2. Heads and FFN widths
        are one config size for all blocks (tied)."""
        heads = tuple(j * self.n_heads for j in range(self.head_dim))
        producers = [unit_slice("item_emb.weight", 1), unit_slice("pos_emb.weight", 1),
                     unit_slice("final_norm.weight", 0), unit_slice("final_norm.bias", 0)]
        consumers = []
        groups = []
        for i in range(self.layers):
            p = f"blocks.{i}."
            producers += [unit_slice(p + k, 0) for k in ("attn_norm.weight", "attn_norm.bias", "ffn_norm.weight",
                                                          "ffn_norm.bias", "out.weight", "out.bias", "ffn2.weight",
                                                          "ffn2.bias")]
            consumers += [unit_slice(p + k, 1) for k in ("q.weight", "k.weight", "v.weight", "ffn1.weight")]
            if self.n_heads > 1:   # a single head is never removable (it would leave no attention)
                groups.append(UnitGroup(p + "heads", "mlp", self.n_heads,
                                        [unit_slice(p + f"{m}.{w}", 0, *heads) for m in "qkv" for w in ("weight", "bias")],
                                        [unit_slice(p + "out.weight", 1, *heads)], tie="n_heads"))
            groups.append(UnitGroup(p + "ffn", "mlp", self.inner_size,
                                    [unit_slice(p + "ffn1.weight", 0), unit_slice(p + "ffn1.bias", 0)],
                                    [unit_slice(p + "ffn2.weight", 1)], tie="inner_size"))
        return [UnitGroup("embedding_dims", "embeddings", self.hidden_size, producers, consumers), *groups]

    def resized(self, n_keep: dict[str, int]) -> dict[str, Any]:
        return {**self.config(), "hidden_size": n_keep["embedding_dims"], "n_heads": n_keep.get("blocks.0.heads", self.n_heads),
                "inner_size": n_keep["blocks.0.ffn"]}

    @classmethod
    def unit_counts(cls, model_cfg: dict[str, Any]) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        d, h, inner = model_cfg.get("hidden_size"), model_cfg.get("n_heads", 1), model_cfg.get("inner_size", 0)
        if isinstance(d, int):
            out[f"the embedding dims (model.hidden_size={d})"] = ("embeddings", d)
        if isinstance(h, int) and h > 1:
            out[f"the attention heads (model.n_heads={h})"] = ("mlp", h)
        if isinstance(inner, int) and (inner or isinstance(d, int)):
            width = f"model.inner_size={inner}" if inner else f"model.inner_size=0, so model.hidden_size={d}"
            out[f"the FFN units ({width})"] = ("mlp", inner or d)
        return out
