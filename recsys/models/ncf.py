"""NCF family (He et al., WWW 2017): GMF, MLP and NeuMF as plain torch modules.

Every model of the family has the same small interface so that tasks, compression and measurement code never
special-case a model: ``forward(users, items) -> logits``, ``score(users, items)`` (same, no grad assumptions) and
``score_all(users) -> (len(users), n_items)`` for full-catalogue ranking. No Lightning, no I/O here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from recsys.models.base import UnitGroup, global_hooks, own_hooks, plain_params, unit_slice

# Structured-pruning couplings (written by hand rather than with a dependency-graph library: the result must be rebuilt
# from ``config()``): GMF's user and item tables are multiplied element-wise (a factor goes from both), MLP's first
# Linear reads [p_u; q_i] whose halves must stay equal (layers[0] = 2 x embedding size), NeuMF's output layer reads
# [gmf ; mlp] at an offset.


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")


def _gmf_groups(factors: int, p: str, out_key: str, offset: int) -> list[UnitGroup]:
    return [UnitGroup(f"{p}factors", "embeddings", factors,
                      [unit_slice(f"{p}user_embedding.weight", 1), unit_slice(f"{p}item_embedding.weight", 1)],
                      [unit_slice(out_key, 1, offset)])]


def _mlp_groups(mlp: "MLP", p: str, out_key: str, offset: int) -> list[UnitGroup]:
    lins = [f"{p}tower.{i}" for i, m in enumerate(mlp.tower) if isinstance(m, nn.Linear)]
    emb = mlp.layers[0] // 2
    first = f"{lins[0]}.weight" if lins else out_key
    base = 0 if lins else offset
    groups = [UnitGroup(f"{p}user_dims", "embeddings", emb, [unit_slice(f"{p}user_embedding.weight", 1)],
                        [unit_slice(first, 1, base)], tie=f"{p}dims"),
              UnitGroup(f"{p}item_dims", "embeddings", emb, [unit_slice(f"{p}item_embedding.weight", 1)],
                        [unit_slice(first, 1, base + emb)], tie=f"{p}dims")]
    for i, lin in enumerate(lins):
        nxt = unit_slice(f"{lins[i + 1]}.weight", 1) if i + 1 < len(lins) else unit_slice(out_key, 1, offset)
        groups.append(UnitGroup(lin, "mlp", mlp.layers[i + 1],
                                [unit_slice(f"{lin}.weight", 0), unit_slice(f"{lin}.bias", 0)], [nxt]))
    return groups


def _hooked(m: nn.Module) -> bool:
    """Whether calling ``m`` would run any forward or backward hook (its own or a global one)."""
    return own_hooks(m) or global_hooks()


def _linear_of_parts(lin: nn.Module, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``lin(torch.cat(parts, dim=-1))``; in training, for a plain hook-free ``nn.Linear`` on 2-D parts, as the sum of
    each part times its columns of the weight, without the concatenation.

    Why (hand-written): the concatenation writes a batch-sized copy of the embeddings in the forward pass and hands
    its backward's non-contiguous slices to the tables' sparse gradients, which autograd then copies again. NeuMF
    f=32, MLP 128-64-32 at batch 2048 (ML-1M sizes, dense Adam over kept gradient buffers, 2 threads): a bare
    training step 5.1 vs 5.4 ms (median of 9 alternating rounds in one process; the sum was faster in 7 of 9); at
    batch 256 no difference beyond noise. Anything that must see the layer's input (pruning's re-parametrisation,
    quantization observers: module hooks), a replaced layer (quantized, low-rank) and every inference or export path
    (eval mode, no grad) keep the concatenation, so exported graphs and measured artifacts are unchanged."""
    if not (lin.training and torch.is_grad_enabled() and type(lin) is nn.Linear and not _hooked(lin)
            and all(x.dim() == 2 for x in parts)):
        return lin(torch.cat(list(parts), dim=-1))
    w, out, start = lin.weight, lin.bias, 0
    for x in parts:
        cols = w[:, start:start + x.shape[1]].t()
        out = x @ cols if out is None else torch.addmm(out, x, cols)
        start += x.shape[1]
    return out


def _tower(n_keep: dict[str, int], p: str) -> list[int]:
    return [2 * n_keep[f"{p}user_dims"]] + [v for g, v in n_keep.items() if g.startswith(f"{p}tower.")]


def _ints(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _ncf_unit_counts(model_cfg: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Units per structured-pruning group from an NCF model config alone (factors, MLP embedding dims, MLP layers)."""
    out: dict[str, tuple[str, int]] = {}
    if isinstance(model_cfg.get("factors"), int):
        out["factors (model.factors)"] = ("embeddings", model_cfg["factors"])
    layers = model_cfg.get("mlp_layers", model_cfg.get("layers"))
    if isinstance(layers, (list, tuple)) and layers and _ints(layers):
        out["MLP embedding dims (model.mlp_layers[0] / 2)"] = ("embeddings", layers[0] // 2)
        for i, n in enumerate(layers[1:], 1):
            out[f"MLP layer {i} (model.mlp_layers[{i}]={n})"] = ("mlp", n)
    return out


class GMF(nn.Module):
    """Generalised matrix factorisation: sigmoid(h^T (p_u * q_i))."""

    family = "ncf"

    def __init__(self, n_users: int, n_items: int, factors: int = 8) -> None:
        super().__init__()
        _check_positive_int("factors", factors)
        self.n_users, self.n_items, self.factors = n_users, n_items, factors
        self.user_embedding = nn.Embedding(n_users, factors)
        self.item_embedding = nn.Embedding(n_items, factors)
        self.predict = nn.Linear(factors, 1)
        nn.init.normal_(self.user_embedding.weight, std=0.01)
        nn.init.normal_(self.item_embedding.weight, std=0.01)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    def vector(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users) * self.item_embedding(items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.predict(self.vector(users, items)).squeeze(-1)

    score = forward

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user: a (b, f) x (f, n_items) product, no pair expansion."""
        u = self.user_embedding(users) * self.predict.weight  # fold h into the user side
        return u @ self.item_embedding.weight.T + self.predict.bias

    def config(self) -> dict:
        return {"_target_": "recsys.models.ncf.GMF", "n_users": self.n_users, "n_items": self.n_items, "factors": self.factors}

    QUANT_KINDS = ("embeddings", "linear")   # quant.targets this model has modules of
    STUDENT_KEYS = ("factors",)
    STUDENT_ALIASES: dict[str, str] = {}
    unit_counts = classmethod(lambda cls, model_cfg: _ncf_unit_counts(model_cfg))

    def unit_groups(self) -> list[UnitGroup]:
        return _gmf_groups(self.factors, "", "predict.weight", 0)

    def resized(self, n_keep: dict[str, int]) -> dict[str, Any]:
        return {**self.config(), "factors": n_keep["factors"]}


class MLP(nn.Module):
    """MLP tower over concatenated user and item embeddings (embedding size = layers[0] / 2)."""

    family = "ncf"

    def __init__(self, n_users: int, n_items: int, layers: Sequence[int] = (64, 32, 16, 8), dropout: float = 0.0) -> None:
        super().__init__()
        layers = [int(x) for x in layers]
        if len(layers) < 1:
            raise ValueError("model.mlp_layers must list at least one size, e.g. [128, 64, 32]")
        for size in layers:
            _check_positive_int("mlp_layers entries", size)
        if layers[0] % 2:
            raise ValueError(f"model.mlp_layers[0] is the concatenated embedding size and must be even, got {layers[0]}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.n_users, self.n_items, self.layers, self.dropout = n_users, n_items, layers, float(dropout)
        emb = layers[0] // 2
        self.user_embedding = nn.Embedding(n_users, emb)
        self.item_embedding = nn.Embedding(n_items, emb)
        blocks: list[nn.Module] = []
        for d_in, d_out in zip(layers[:-1], layers[1:]):
            # nn.Identity at dropout 0: the same tower (no parameters either way), without dropout's call in each
            # training step (~1 % of a NeuMF step at batch 256, py-spy)
            blocks += [nn.Dropout(dropout) if dropout else nn.Identity(), nn.Linear(d_in, d_out), nn.ReLU()]
        self.tower = nn.Sequential(*blocks)
        self.predict = nn.Linear(layers[-1], 1)
        nn.init.normal_(self.user_embedding.weight, std=0.01)
        nn.init.normal_(self.item_embedding.weight, std=0.01)
        for m in self.tower:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    def vector(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = [self.user_embedding(users), self.item_embedding(items)]
        mods = list(self.tower._modules.values())   # (indexing a Sequential by a slice builds a new one per call)
        if len(mods) < 2 or type(mods[0]) is not nn.Identity:   # dropout on the concatenation
            return self.tower(torch.cat(parts, dim=-1))
        h = _linear_of_parts(mods[1], parts)
        for m in mods[2:]:
            h = m(h)
        return h

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.predict(self.vector(users, items)).squeeze(-1)

    score = forward

    def tower_scores(self, users: torch.Tensor, w_out: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """``tower(user, item) . w_out`` for every item, shape (b, n_items), without materialising all pairs at once.

        The first Linear acts on [p_u; q_i], so W [p_u; q_i] = W_u p_u + W_i q_i: both halves are computed once per user
        and once per item and broadcast-added, which removes the largest matmul of full-catalogue scoring exactly. The
        rest runs over blocks of ``chunk`` users so the (chunk x n_items x hidden) intermediates stay in cache; torch.profiler
        showed the unblocked version spending ~70% of its time in memory-bound add/ReLU/copy over a 100+ MB tensor.
        Dropout is skipped: this is the inference path (eval mode). ``chunk`` (users per block) defaults to 16 up to
        ~4 M intermediate floats per block (ML-1M with a 64-wide first layer: 16) and fewer users beyond: at ML-20M's
        26,744 items a 16-user block is 110 MB, and 2-user blocks ran the tower ~3x faster (1 thread, loaded machine).
        """
        lins = [m for m in self.tower if isinstance(m, nn.Linear)]
        emb = self.user_embedding.weight.shape[1]
        u, items = self.user_embedding(users), self.item_embedding.weight
        if not lins:
            return (u @ w_out[:emb])[:, None] + (items @ w_out[emb:])[None, :]
        first = lins[0]
        uw = torch.addmm(first.bias, u, first.weight[:, :emb].T)
        iw = items @ first.weight[:, emb:].T
        if chunk is None:
            chunk = max(1, min(16, 4_000_000 // max(1, iw.shape[0] * iw.shape[1])))
        inplace = not torch.is_grad_enabled()
        out = []
        for s in range(0, len(users), chunk):
            h = (iw[None] + uw[s:s + chunk, None]).reshape(-1, iw.shape[1])
            h = h.relu_() if inplace else torch.relu(h)
            for lin in lins[1:]:
                h = torch.addmm(lin.bias, h, lin.weight.T)
                h = h.relu_() if inplace else torch.relu(h)
            out.append((h @ w_out).view(-1, iw.shape[0]))
        return torch.cat(out)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.tower_scores(users, self.predict.weight[0]) + self.predict.bias

    def config(self) -> dict:
        return {"_target_": "recsys.models.ncf.MLP", "n_users": self.n_users, "n_items": self.n_items, "layers": self.layers,
                "dropout": self.dropout}

    QUANT_KINDS = ("embeddings", "linear")   # quant.targets this model has modules of
    STUDENT_KEYS = ("layers",)
    STUDENT_ALIASES: dict[str, str] = {}
    unit_counts = classmethod(lambda cls, model_cfg: _ncf_unit_counts(model_cfg))

    def unit_groups(self) -> list[UnitGroup]:
        return _mlp_groups(self, "", "predict.weight", 0)

    def resized(self, n_keep: dict[str, int]) -> dict[str, Any]:
        return {**self.config(), "layers": _tower(n_keep, "")}


class NeuMF(nn.Module):
    """NeuMF: GMF and MLP branches with separate embeddings, fused by one output layer on [gmf ; mlp]."""

    family = "ncf"

    def __init__(self, n_users: int, n_items: int, factors: int = 8, mlp_layers: Sequence[int] = (64, 32, 16, 8),
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.gmf = GMF(n_users, n_items, factors)
        self.mlp = MLP(n_users, n_items, mlp_layers, dropout)
        # The branches' own output layers are unused in NeuMF; drop them so they are neither trained nor shipped.
        del self.gmf.predict, self.mlp.predict
        self.predict = nn.Linear(factors + self.mlp.layers[-1], 1)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.gmf.vector(users, items), self.mlp.vector(users, items)], dim=-1)
        return self.predict(h).squeeze(-1)

    score = forward

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        f = self.gmf.factors
        w_g, w_m = self.predict.weight[0, :f], self.predict.weight[0, f:]
        g = torch.addmm(self.predict.bias, self.gmf.user_embedding(users) * w_g, self.gmf.item_embedding.weight.T)
        return g + self.mlp.tower_scores(users, w_m)

    def _plain_tower(self) -> list[nn.Linear] | None:
        """The MLP tower's Linear layers where the model is exactly as built (plain tables, [Identity, Linear, ReLU]
        blocks, a plain output layer, no hook on any module, every parameter a trainable float32 leaf): the structure
        :meth:`bce_gradients` covers. None otherwise (pruned, quantized, low-rank, dropout, frozen or hooked parts).
        Checked on every step (a callback may prune or replace layers mid-fit), so it reads the modules forward
        calls directly instead of walking ``modules()``, and the global hooks once (~80 -> ~40 us a call, NeuMF
        128-64-32)."""
        mods = list(self.mlp.tower._modules.values())
        if len(mods) % 3 or global_hooks():
            return None
        tables = (self.gmf.user_embedding, self.gmf.item_embedding, self.mlp.user_embedding, self.mlp.item_embedding)
        if not plain_params(self, self.gmf, self.mlp, self.mlp.tower, *tables, *mods, self.predict):
            return None
        for e in tables:
            if type(e) is not nn.Embedding or e.padding_idx is not None or e.max_norm is not None or \
                    e.scale_grad_by_freq:
                return None
        lins = mods[1::3]
        if any(type(d) is not nn.Identity for d in mods[0::3]) or any(type(a) is not nn.ReLU for a in mods[2::3]) or \
                any(type(m) is not nn.Linear or m.bias is None for m in [*lins, self.predict]):
            return None
        return lins

    @torch.no_grad()
    def bce_gradients(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]]] | None:
        """One training step's gradients of the mean binary cross-entropy of ``forward(users, items)`` against
        ``labels``, written out: sets ``.grad`` of the tower and output layers and returns ``(loss, rows)``, ``rows``
        = ``(table weight, row ids, gradient rows)`` for the four embedding tables (an id repeated in the batch has
        one gradient row per occurrence, to be summed in order). None, with nothing set, where the model is not the
        structure this covers (:meth:`_plain_tower`); the caller then takes the autograd path.

        The operators autograd runs for :meth:`forward` in training (the first tower layer summed over its user and
        item columns), in the same order: a fit ends with autograd's weights bit for bit here (held by a test).

        Why (hand-written): autograd adds view, slice and accumulation nodes and the engine's bookkeeping to each
        step, and hands the tables' gradients over as sparse tensors that the optimizer copies again; the rows here
        go straight to :meth:`recsys.tasks.optim.ScatterAdam.update_rows`. NeuMF f=32, MLP 128-64-32, ML-1M batches
        of 2048, 2 threads, ScatterAdam: a bare step 3.79 vs 4.49 ms and 3.76 vs 4.20 ms (two runs, median of 7
        alternating rounds each, noisy machine); the training stage's epoch 7.9 vs 9.5 s (mean of 3 alternating
        one-epoch runs), the same test HR@10."""
        lins = self._plain_tower()
        if lins is None:
            return None
        users, items = users.long(), items.long()
        gu, gi = self.gmf.user_embedding.weight, self.gmf.item_embedding.weight
        mu, mi = self.mlp.user_embedding.weight, self.mlp.item_embedding.weight
        ug, ig, um, im = gu.index_select(0, users), gi.index_select(0, items), mu.index_select(0, users), \
            mi.index_select(0, items)
        e, f = mu.shape[1], gu.shape[1]
        if lins:
            w1 = lins[0].weight
            h = torch.addmm(lins[0].bias, um, w1[:, :e].t()).addmm_(im, w1[:, e:].t()).relu_()
        else:   # model.mlp_layers of one size: the MLP branch is the concatenated embeddings
            h = torch.cat([um, im], dim=1)
        hs = [h]
        for lin in lins[1:]:
            h = torch.addmm(lin.bias, h, lin.weight.t()).relu_()
            hs.append(h)
        g = ug * ig
        x = torch.cat([g, h], dim=1)
        z = torch.addmm(self.predict.bias, x, self.predict.weight.t()).squeeze(-1)
        loss = nn.functional.binary_cross_entropy_with_logits(z, labels)
        dz = torch.sigmoid(z).sub_(labels).div_(len(z))   # d loss / d z
        self.predict.weight.grad = dz[None] @ x
        self.predict.bias.grad = dz.sum().reshape(1)
        dx = dz[:, None] * self.predict.weight
        dg, dh = dx[:, :f], dx[:, f:]
        for k in range(len(lins) - 1, -1, -1):
            dh = torch.ops.aten.threshold_backward(dh, hs[k], 0)   # ReLU's backward, as autograd computes it
            lins[k].bias.grad = dh.sum(0)
            if k:
                lins[k].weight.grad = dh.t() @ hs[k - 1]
                dh = dh @ lins[k].weight
        if lins:
            dht = dh.t()
            w1g = torch.empty_like(w1)
            torch.mm(dht, um, out=w1g[:, :e])
            torch.mm(dht, im, out=w1g[:, e:])
            lins[0].weight.grad = w1g
            dum, dim = dh @ w1[:, :e], dh @ w1[:, e:]
        else:
            dum, dim = dh[:, :e], dh[:, e:]
        return loss, [(gu, users, dg * ig), (gi, items, dg * ug), (mu, users, dum), (mi, items, dim)]

    @torch.no_grad()
    def load_pretrained(self, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> None:
        """Initialise from trained GMF and MLP as in the paper: copy both branches, output layer = [a*h_gmf, (1-a)*h_mlp]."""
        if gmf.factors != self.gmf.factors or mlp.layers != self.mlp.layers:
            raise ValueError(f"pre-trained GMF/MLP shapes (factors={gmf.factors}, layers={mlp.layers}) do not match "
                             f"NeuMF (factors={self.gmf.factors}, layers={self.mlp.layers})")
        for name, p in gmf.state_dict().items():
            if not name.startswith("predict"):
                self.gmf.state_dict()[name].copy_(p)
        for name, p in mlp.state_dict().items():
            if not name.startswith("predict"):
                self.mlp.state_dict()[name].copy_(p)
        self.predict.weight.copy_(torch.cat([alpha * gmf.predict.weight, (1 - alpha) * mlp.predict.weight], dim=1))
        self.predict.bias.copy_(alpha * gmf.predict.bias + (1 - alpha) * mlp.predict.bias)

    def config(self) -> dict:
        return {"_target_": "recsys.models.ncf.NeuMF", "n_users": self.n_users, "n_items": self.n_items, "factors": self.gmf.factors,
                "mlp_layers": self.mlp.layers, "dropout": self.mlp.dropout}

    QUANT_KINDS = ("embeddings", "linear")   # quant.targets this model has modules of
    STUDENT_KEYS = ("factors", "mlp_layers")
    STUDENT_ALIASES: dict[str, str] = {}
    unit_counts = classmethod(lambda cls, model_cfg: _ncf_unit_counts(model_cfg))

    def unit_groups(self) -> list[UnitGroup]:
        return _gmf_groups(self.gmf.factors, "gmf.", "predict.weight", 0) + \
            _mlp_groups(self.mlp, "mlp.", "predict.weight", self.gmf.factors)

    def resized(self, n_keep: dict[str, int]) -> dict[str, Any]:
        return {**self.config(), "factors": n_keep["gmf.factors"], "mlp_layers": _tower(n_keep, "mlp.")}
