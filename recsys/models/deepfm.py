"""DeepFM (Guo et al., IJCAI 2017): a factorisation machine and an MLP that share one embedding per field.

Field kinds: categorical (one id per field), multi-hot (a bag of ids per field, mean-pooled, e.g. a movie's genres) and
dense (a real value per field, whose embedding is a learned vector scaled by the value, as in the paper).

Two input modes share the same layers, so compression and measurement code never special-case the data:

* **table mode** (Criteo, a user's own CTR rows): ``forward(cat, dense)`` with ``cat`` LongTensor[b, n_cat] (per-field
  ids, 0-based in each field's vocabulary), followed, when the model has multi-hot fields, by their padded bag ids
  (n_bags * bag_len columns), and ``dense`` FloatTensor[b, n_dense].
* **user-item mode** (MovieLens): ``forward(users, items)``; the model holds its side-feature tables as integer buffers
  (``user_table``: the user's categorical fields, ``item_table``: the item's, ``item_bags``: padded multi-hot ids), so it
  is a user x item scorer like NeuMF and is evaluated by the same ranking protocol. The tables ship in the artifact: a
  deployed model needs them to score a (user, item) pair.

No Lightning, no I/O here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recsys.models.base import UnitGroup, unit_slice

# ``model.init``. default: N(0, 0.01) field embeddings, zero first-order weights, Xavier-uniform MLP layers, torch's
# default output layer. xavier_normal: Xavier-normal on every table and layer, zero biases: RecBole's DeepFM init,
# for a like-for-like side-by-side (experiments/peers.py).
INITS = ("default", "xavier_normal")


def _ints(name: str, values: Sequence[int], allow_empty: bool = True) -> list[int]:
    out = [int(v) for v in values]
    if (not out and not allow_empty) or any(v <= 0 for v in out):
        raise ValueError(f"model.{name} must be a list of positive integers, got {list(values)!r}")
    return out


class DeepFM(nn.Module):
    """logit = w0 + first-order terms + FM pairwise interactions + MLP(concatenated field embeddings)."""

    family = "ctr"

    def __init__(self, field_dims: Sequence[int], n_dense: int = 0, bag_dims: Sequence[int] = (), bag_len: int = 0,
                 embed_dim: int = 16, mlp_layers: Sequence[int] = (400, 400, 400), dropout: float = 0.0,
                 n_users: int = 0, n_items: int = 0, n_user_fields: int = 0, init: str = "default") -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"model.init must be one of {list(INITS)}, got {init!r}")
        self.init = init
        self.field_dims = _ints("field_dims", field_dims)
        self.bag_dims = _ints("bag_dims", bag_dims)
        self.n_dense, self.bag_len, self.embed_dim = int(n_dense), int(bag_len), int(embed_dim)
        self.mlp_layers = _ints("mlp_layers", mlp_layers)
        if self.embed_dim <= 0:
            raise ValueError(f"model.embed_dim must be a positive integer, got {embed_dim!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if not self.field_dims and not self.n_dense and not self.bag_dims:
            raise ValueError("DeepFM needs at least one field (field_dims, n_dense or bag_dims)")
        self.dropout = float(dropout)
        self.n_users, self.n_items, self.n_user_fields = int(n_users), int(n_items), int(n_user_fields)
        n_cat, n_bag = len(self.field_dims), len(self.bag_dims)
        k = self.embed_dim
        # One table for all categorical fields (ids shifted by per-field offsets): one lookup per batch instead of one
        # per field, and one tensor for embedding pruning / quantization to act on.
        self.register_buffer("offsets", torch.tensor([0] + self.field_dims[:-1], dtype=torch.long).cumsum(0),
                             persistent=False)
        self.embedding = nn.Embedding(max(sum(self.field_dims), 1), k)
        self.linear = nn.Embedding(max(sum(self.field_dims), 1), 1)
        # Multi-hot fields: id 0 is padding, field f's ids are shifted by 1 + sum of earlier bag vocabularies.
        self.bag_embedding = nn.Embedding(sum(self.bag_dims) + 1, k, padding_idx=0) if n_bag else None
        self.bag_linear = nn.Embedding(sum(self.bag_dims) + 1, 1, padding_idx=0) if n_bag else None
        self.register_buffer("bag_offsets", torch.tensor([1] + self.bag_dims[:-1], dtype=torch.long).cumsum(0)
                             if n_bag else torch.zeros(0, dtype=torch.long), persistent=False)
        self.dense_embedding = nn.Parameter(torch.randn(self.n_dense, k) * 0.01) if self.n_dense else None
        self.dense_linear = nn.Linear(self.n_dense, 1, bias=False) if self.n_dense else None
        self.bias = nn.Parameter(torch.zeros(1))
        n_fields = n_cat + n_bag + self.n_dense
        blocks: list[nn.Module] = []
        d_in = n_fields * k
        for d_out in self.mlp_layers:
            blocks += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout)]
            d_in = d_out
        self.mlp = nn.Sequential(*blocks)
        self.predict = nn.Linear(d_in, 1)
        nn.init.normal_(self.embedding.weight, std=0.01)
        nn.init.zeros_(self.linear.weight)
        if self.bag_embedding is not None:
            nn.init.normal_(self.bag_embedding.weight, std=0.01)
            nn.init.zeros_(self.bag_linear.weight)
            with torch.no_grad():
                self.bag_embedding.weight[0].zero_()
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if init == "xavier_normal":
            self._xavier_normal()
        # user-item mode: side-feature tables (integer data, not parameters; saved with the weights)
        if self.n_users:
            self.register_buffer("user_table", torch.zeros(self.n_users, self.n_user_fields, dtype=torch.long))
            self.register_buffer("item_table", torch.zeros(self.n_items, n_cat - self.n_user_fields, dtype=torch.long))
            self.register_buffer("item_bags", torch.zeros(self.n_items, n_bag, self.bag_len, dtype=torch.long))

    @torch.no_grad()
    def _xavier_normal(self) -> None:
        for w in (self.embedding.weight, self.linear.weight, self.dense_embedding,
                  *(t.weight for t in (self.bag_embedding, self.bag_linear) if t is not None)):
            if w is not None:
                nn.init.xavier_normal_(w)
        for m in (*self.mlp, self.predict, self.dense_linear):
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for t in (self.bag_embedding, self.bag_linear):   # the padding id stays a zero vector
            if t is not None:
                t.weight[0].zero_()

    # ------------------------------------------------------------------------------------------------- features
    def lookup(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(cat, dense, bags) of (user, item) pairs from the side-feature tables (user-item mode)."""
        cat = torch.cat([self.user_table[users], self.item_table[items]], dim=-1)
        return cat, None, self.item_bags[items]

    def fields(self, cat: torch.Tensor, dense: torch.Tensor | None, bags: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(field embeddings (b, n_fields, k), first-order term (b,)) of a batch."""
        parts, first = [], self.bias.expand(cat.shape[0])
        if self.field_dims:
            idx = cat + self.offsets
            parts.append(self.embedding(idx))
            first = first + self.linear(idx).squeeze(-1).sum(-1)
        if self.bag_embedding is not None and bags is not None:
            mask = bags > 0
            idx = torch.where(mask, bags + self.bag_offsets[:, None] - 1, torch.zeros_like(bags))
            count = mask.sum(-1).clamp(min=1)                                  # (b, n_bags)
            parts.append(self.bag_embedding(idx).sum(-2) / count.unsqueeze(-1))   # mean-pooled (b, n_bags, k)
            first = first + (self.bag_linear(idx).squeeze(-1).sum(-1) / count).sum(-1)
        if self.n_dense and dense is not None:
            parts.append(dense.unsqueeze(-1) * self.dense_embedding)
            first = first + self.dense_linear(dense).squeeze(-1)
        return torch.cat(parts, dim=1), first

    def logits(self, cat: torch.Tensor, dense: torch.Tensor | None = None, bags: torch.Tensor | None = None
               ) -> torch.Tensor:
        """DeepFM logit of each row from its raw fields."""
        emb, first = self.fields(cat, dense, bags)
        s = emb.sum(1)
        fm = 0.5 * (s * s - (emb * emb).sum(1)).sum(-1)
        deep = self.predict(self.mlp(emb.flatten(1))).squeeze(-1)
        return first + fm + deep

    # ------------------------------------------------------------------------------------------------ interface
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits: ``(users, items)`` in user-item mode, ``(cat, dense)`` in table mode."""
        if self.n_users:
            return self.logits(*self.lookup(a, b))
        if self.bag_dims:   # table mode with multi-hot fields: their padded ids follow the categorical ids in ``a``
            n = len(self.field_dims)
            return self.logits(a[:, :n], b, a[:, n:].reshape(a.shape[0], len(self.bag_dims), self.bag_len))
        return self.logits(a, b, None)

    score = forward

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user (user-item mode): every (user, item) pair through the network."""
        if not self.n_users:
            raise TypeError("score_all needs user-item mode (DeepFM built with n_users/n_items)")
        n = self.n_items
        items = torch.arange(n, device=users.device).repeat(len(users))
        return self.forward(users.repeat_interleave(n), items).view(len(users), n)

    def config(self) -> dict:
        return {"_target_": "recsys.models.deepfm.DeepFM", "field_dims": self.field_dims, "n_dense": self.n_dense,
                "bag_dims": self.bag_dims, "bag_len": self.bag_len, "embed_dim": self.embed_dim,
                "mlp_layers": self.mlp_layers, "dropout": self.dropout, "n_users": self.n_users,
                "n_items": self.n_items, "n_user_fields": self.n_user_fields, "init": self.init}

    # ------------------------------------------------------------------------------------ compression contract
    QUANT_KINDS = ("embeddings", "linear")   # quant.targets this model has modules of
    STUDENT_KEYS = ("embed_dim", "mlp_layers")
    STUDENT_ALIASES: dict[str, str] = {}

    def unit_groups(self) -> list[UnitGroup]:
        """The FM term is a dot product across fields, so dimension d goes from every field's table at once (and from
        the MLP input columns f * k + d); each MLP neuron is a group of its own."""
        k = self.embed_dim
        n_fields = len(self.field_dims) + len(self.bag_dims) + self.n_dense
        tables = [unit_slice(f"{t}.weight", 1) for t in ("embedding", "bag_embedding") if getattr(self, t) is not None]
        if self.dense_embedding is not None:
            tables.append(unit_slice("dense_embedding", 1))
        lins = [f"mlp.{i}" for i, m in enumerate(self.mlp) if isinstance(m, nn.Linear)]
        deep_in = f"{lins[0]}.weight" if lins else "predict.weight"
        groups = [UnitGroup("embed_dims", "embeddings", k, tables,
                            [unit_slice(deep_in, 1, *range(0, n_fields * k, k))])]
        for i, lin in enumerate(lins):
            nxt = f"{lins[i + 1]}.weight" if i + 1 < len(lins) else "predict.weight"
            groups.append(UnitGroup(lin, "mlp", self.mlp_layers[i],
                                    [unit_slice(f"{lin}.weight", 0), unit_slice(f"{lin}.bias", 0)],
                                    [unit_slice(nxt, 1)]))
        return groups

    def resized(self, n_keep: dict[str, int]) -> dict[str, Any]:
        return {**self.config(), "embed_dim": n_keep["embed_dims"],
                "mlp_layers": [v for g, v in n_keep.items() if g.startswith("mlp.")]}

    @classmethod
    def unit_counts(cls, model_cfg: dict[str, Any]) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        if isinstance(model_cfg.get("embed_dim"), int):
            out[f"the field embedding dims (model.embed_dim={model_cfg['embed_dim']})"] = ("embeddings",
                                                                                         model_cfg["embed_dim"])
        layers = model_cfg.get("mlp_layers")
        if isinstance(layers, (list, tuple)) and all(isinstance(n, int) and not isinstance(n, bool) for n in layers):
            for i, n in enumerate(layers):
                out[f"MLP layer {i} (model.mlp_layers[{i}]={n})"] = ("mlp", n)
        return out
