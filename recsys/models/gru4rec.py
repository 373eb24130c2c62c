"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018) as a plain torch module.

A session is a sequence of item ids. Each click's item is embedded, fed to ``nn.GRU`` one step at a time, and the final
hidden state scores every item through the output layer ``out`` (a Linear whose rows are the output item embeddings and
whose bias is the item bias). With ``constrained_embedding`` the input embedding *is* the output embedding (the
official implementation's best settings on YooChoose use this), so the model has one item table.

The official code feeds a one-hot vector when ``embedding=0`` and the embedding is not constrained; one-hot x W_ih is an
item table of size n_items x 3H, which ``nn.GRU`` cannot take directly, so here that case gets a learned embedding of
size ``hidden_size`` instead (same role, factorised). ``nn.GRU`` is kept (rather than a hand-written cell) so that
PyTorch's dynamic int8 GRU and pruning utilities apply to it unchanged.

Interface shared with the other models: ``forward(seq, lengths)`` = ``score`` -> (b, n_items) scores of the next item after
each (right-padded) sequence; the SessionModel contract of ``models/base.py`` (``init_state`` / ``advance`` / ... =
the GRU hidden state and ``step``) for session-parallel training, evaluation and serving; ``config()``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from recsys.models.base import LOSSES, UnitGroup, sampled_loss, unit_slice  # noqa: F401  (re-exported)


def _tensor(w: torch.Tensor | object) -> torch.Tensor:
    """A plain float tensor from a (possibly quantized, possibly callable) weight attribute."""
    w = w() if callable(w) else w
    return w.dequantize() if getattr(w, "is_quantized", False) else w


class GRU4Rec(nn.Module):
    """Session-based next-item model: item embedding -> GRU layer(s) -> scores over all items."""

    family = "session"

    def __init__(self, n_items: int, hidden_size: int = 100, layers: int = 1, embedding: int = 0,
                 constrained_embedding: bool = True, dropout_p_embed: float = 0.0, dropout_p_hidden: float = 0.0,
                 elu_param: float = 0.0) -> None:
        super().__init__()
        for name, v in (("n_items", n_items), ("hidden_size", hidden_size), ("layers", layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {v!r}")
        if not isinstance(embedding, int) or embedding < 0:
            raise ValueError(f"model.embedding must be an integer >= 0, got {embedding!r}")
        for name, p in (("dropout_p_embed", dropout_p_embed), ("dropout_p_hidden", dropout_p_hidden)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {p}")
        self.n_items, self.hidden_size, self.layers = n_items, hidden_size, layers
        self.embedding_size, self.constrained_embedding = int(embedding), bool(constrained_embedding)
        self.dropout_p_embed, self.dropout_p_hidden, self.elu_param = float(dropout_p_embed), float(dropout_p_hidden), float(elu_param)
        if self.constrained_embedding:
            self.embedding, in_dim = None, hidden_size
        else:
            in_dim = self.embedding_size or hidden_size
            self.embedding = nn.Embedding(n_items, in_dim)
            nn.init.uniform_(self.embedding.weight, -(6 / (n_items + in_dim)) ** 0.5, (6 / (n_items + in_dim)) ** 0.5)
        self.gru = nn.GRU(in_dim, hidden_size, num_layers=layers, dropout=dropout_p_hidden if layers > 1 else 0.0)
        self.out = nn.Linear(hidden_size, n_items)
        bound = (6 / (n_items + hidden_size)) ** 0.5
        nn.init.uniform_(self.out.weight, -bound, bound)
        nn.init.zeros_(self.out.bias)
        self.drop_embed, self.drop_hidden = nn.Dropout(dropout_p_embed), nn.Dropout(dropout_p_hidden)

    # ------------------------------------------------------------------------------------------------ pieces
    def output_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(item output embeddings (n_items, H), item biases (n_items,)) as float tensors, whatever wraps ``out``."""
        return _tensor(self.out.weight), _tensor(self.out.bias)

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        """Input embedding of each item id."""
        if self.embedding is None:
            return F.embedding(items, self.output_weights()[0])
        return self.embedding(items)

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """A zero hidden state (layers, batch, hidden_size): the state at the start of every session."""
        return torch.zeros(self.layers, batch, self.hidden_size, device=device)

    def step(self, items: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One click per session: (output state (b, H) used for scoring, new hidden (layers, b, H))."""
        x = self.drop_embed(self.embed(items))
        out, hidden = self.gru(x.unsqueeze(0), hidden)
        h = self.drop_hidden(out.squeeze(0))
        if self.elu_param > 0:
            h = F.elu(h, alpha=self.elu_param)
        return h, hidden

    def item_scores(self, h: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``items`` (all items when None) for each state row: (b, len(items))."""
        if items is None:
            return self.out(h)
        w, b = self.output_weights()
        return h @ w[items].T + b[items]

    # --------------------------------------------------------------------------------------------- interface
    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the next click after each right-padded sequence ``seq`` (b, L) of ``lengths``."""
        hidden = self.init_hidden(seq.shape[0], seq.device)
        h = torch.zeros(seq.shape[0], self.hidden_size, device=seq.device)
        for t in range(int(lengths.max())):
            live = (t < lengths)[:, None]
            h_t, hid_t = self.step(seq[:, t], hidden)
            h = torch.where(live, h_t, h)
            hidden = torch.where(live[None], hid_t, hidden)
        return self.item_scores(h)

    score = forward

    def score_next(self, items: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Serving request: a session's new click(s) + its stored hidden state -> (scores over all items, new hidden)."""
        h, hidden = self.step(items, hidden)
        return self.item_scores(h), hidden

    def config(self) -> dict:
        return {"_target_": "recsys.models.gru4rec.GRU4Rec", "n_items": self.n_items, "hidden_size": self.hidden_size,
                "layers": self.layers, "embedding": self.embedding_size,
                "constrained_embedding": self.constrained_embedding, "dropout_p_embed": self.dropout_p_embed,
                "dropout_p_hidden": self.dropout_p_hidden, "elu_param": self.elu_param}

    # --------------------------------------------------------------------- session-model contract (models/base.py)
    def init_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.init_hidden(batch, device)

    def advance(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step(items, state)

    def reset_state(self, state: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        """Truncated BPTT of one step (as the official code): the state carries over, its gradient does not."""
        return state.detach() * (~reset).to(state.dtype)[None, :, None]

    def keep_state(self, new: torch.Tensor, old: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return torch.where(live[None, :, None], new, old)

    def serving_state(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            return self.init_hidden(batch)
        return torch.randn(self.layers, batch, self.hidden_size, generator=generator) * 0.1

    # ------------------------------------------------------------------------------------ compression contract
    QUANT_KINDS = ("embeddings", "linear", "gru")   # quant.targets this model has modules of
    STUDENT_KEYS = ("hidden_size", "embedding", "layers")
    STUDENT_ALIASES = {"hidden": "hidden_size"}   # distill.student.hidden=32 reads as model.hidden_size

    def unit_groups(self) -> list[UnitGroup]:
        """Hidden unit j of a layer is rows j, H+j, 2H+j (reset, update, new gates) of its GRU weights; the tied item
        table (constrained embedding) makes the last layer's unit j also input dimension j."""
        gates = (0, self.hidden_size, 2 * self.hidden_size)
        groups = []
        if self.embedding is not None:
            groups.append(UnitGroup("embedding_dims", "embeddings", self.embedding.embedding_dim,
                                    [unit_slice("embedding.weight", 1)], [unit_slice("gru.weight_ih_l0", 1)]))
        for layer in range(self.layers):
            producers = [unit_slice(f"gru.{w}_l{layer}", 0, *gates)
                         for w in ("weight_hh", "weight_ih", "bias_ih", "bias_hh")]
            consumers = [unit_slice(f"gru.weight_hh_l{layer}", 1)]
            if layer + 1 < self.layers:
                consumers.append(unit_slice(f"gru.weight_ih_l{layer + 1}", 1))
            else:
                consumers.append(unit_slice("out.weight", 1))
                if self.embedding is None:
                    # constrained embedding: the input item table is out.weight, so the last layer's unit j is also
                    # input dimension j. The mask cuts it at the GRU's input columns rather than on out.weight, which
                    # the session loss reads directly (never through out's forward, where a mask's hook would refresh
                    # it).
                    producers.append(unit_slice("gru.weight_ih_l0", 1))
            groups.append(UnitGroup(f"gru.layer{layer}", "mlp", self.hidden_size, producers, consumers,
                                    tie="gru.hidden_size"))
        return groups

    def resized(self, n_keep: dict[str, int]) -> dict[str, Any]:
        spec = {**self.config(), "hidden_size": n_keep["gru.layer0"]}
        if self.embedding is not None:   # explicit, so that embedding=0 (input width = hidden_size) keeps its width
            spec["embedding"] = n_keep["embedding_dims"]
        return spec

    @classmethod
    def structured_problems(cls, model_cfg: dict[str, Any], targets: str) -> list[str]:
        """Config combinations structured pruning cannot serve, in the user's words."""
        if targets == "embeddings" and model_cfg.get("constrained_embedding", True):
            return ["prune.targets='embeddings' with model=gru4rec and model.constrained_embedding=true: the item "
                    "table is the output layer, tied to the GRU hidden units, so there are no separate embedding "
                    "dims; use prune.targets=mlp or all (GRU hidden units), or model.constrained_embedding=false"]
        return []

    @classmethod
    def unit_counts(cls, model_cfg: dict[str, Any]) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        h, emb = model_cfg.get("hidden_size"), model_cfg.get("embedding", 0)
        if not model_cfg.get("constrained_embedding", True) and isinstance(emb, int) and isinstance(emb or h, int):
            width = f"model.embedding={emb}" if emb else f"model.embedding=0, so model.hidden_size={h}"
            out[f"the input embedding dims ({width})"] = ("embeddings", emb or h)
        if isinstance(h, int):
            out[f"the GRU hidden units (model.hidden_size={h})"] = ("mlp", h)
        return out
