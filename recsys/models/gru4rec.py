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

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from recsys.models.base import LOSSES, UnitGroup, global_hooks, plain_params, sampled_loss, unit_slice  # noqa: F401


def _tensor(w: torch.Tensor | object) -> torch.Tensor:
    """A plain float tensor from a (possibly quantized, possibly callable) weight attribute."""
    w = w() if callable(w) else w
    return w.dequantize() if getattr(w, "is_quantized", False) else w


INITS = ("torch", "official")   # GRU init: torch's nn.GRU default | glorot per gate block, zero biases


class _Rows(torch.autograd.Function):
    """The rows ``rows`` (unique, ascending) of ``table``, whose gradient comes back as a coalesced sparse tensor of just
    those rows (of the rows where ``keep`` is true when given), so a row-wise optimiser updates only them. Written by
    hand because ``F.embedding(sparse=True)`` returns one uncoalesced row per lookup (2,000+ per step here), which the
    optimiser then had to sort and sum every step."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
        ctx.rows, ctx.keep, ctx.shape = rows, keep, table.shape
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205  (autograd.Function signature)
        rows = ctx.rows
        if ctx.keep is not None:
            rows, grad = rows[ctx.keep], grad[ctx.keep]
        return torch.sparse_coo_tensor(rows[None], grad, ctx.shape, is_coalesced=True), None, None


def unique_rows(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct ids in ascending order, the position of each id among them): ``torch.unique(ids,
    return_inverse=True)`` through an n-long marker, which is cheaper than sorting for ids below a small ``n``."""
    mark = torch.zeros(n, dtype=torch.bool, device=ids.device)
    mark[ids] = True
    return mark.nonzero().squeeze(1), (mark.cumsum(0) - 1)[ids]


class GRU4Rec(nn.Module):
    """Session-based next-item model: item embedding -> GRU layer(s) -> scores over all items."""

    family = "session"

    def __init__(self, n_items: int, hidden_size: int = 100, layers: int = 1, embedding: int = 0,
                 constrained_embedding: bool = True, dropout_p_embed: float = 0.0, dropout_p_hidden: float = 0.0,
                 elu_param: float = 0.0, carry_dropout: bool = False, init: str = "torch",
                 sparse_items: bool = False) -> None:
        super().__init__()
        for name, v in (("n_items", n_items), ("hidden_size", hidden_size), ("layers", layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {v!r}")
        if not isinstance(embedding, int) or embedding < 0:
            raise ValueError(f"model.embedding must be an integer >= 0, got {embedding!r}")
        for name, p in (("dropout_p_embed", dropout_p_embed), ("dropout_p_hidden", dropout_p_hidden)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {p}")
        if init not in INITS:
            raise ValueError(f"model.init must be one of {list(INITS)}, got {init!r}")
        self.n_items, self.hidden_size, self.layers = n_items, hidden_size, layers
        # official GRU4Rec semantics, opt-in (see conf/model/gru4rec.yaml): the dropped-out state is also carried to the
        # session's next step; glorot-uniform per gate block with zero GRU biases; sparse row gradients of the item table
        self.carry_dropout, self.init, self.sparse_items = bool(carry_dropout), init, bool(sparse_items)
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
        if init == "official":
            self._init_per_gate()
        self.drop_embed, self.drop_hidden = nn.Dropout(dropout_p_embed), nn.Dropout(dropout_p_hidden)

    def _init_per_gate(self) -> None:
        """Glorot-uniform init of each gate block (reset, update, new) of every GRU matrix; zero GRU biases (as the
        official implementation's compatibility mode)."""
        H = self.hidden_size
        with torch.no_grad():
            for name, w in self.gru.named_parameters():
                if name.startswith("bias"):
                    nn.init.zeros_(w)
                    continue
                bound = (6 / (w.shape[1] + H)) ** 0.5
                for g in range(3):
                    nn.init.uniform_(w[g * H:(g + 1) * H], -bound, bound)

    def _sparse_table(self) -> bool:
        """Whether training reads the item table with sparse row gradients (only when ``out`` holds plain parameters:
        a pruning or quantization wrapper turns ``out.weight`` into a computed tensor)."""
        return (self.sparse_items and self.training and isinstance(self.out.weight, nn.Parameter)
                and isinstance(self.out.bias, nn.Parameter))

    # ------------------------------------------------------------------------------------------------ pieces
    def output_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(item output embeddings (n_items, H), item biases (n_items,)) as float tensors, whatever wraps ``out``."""
        return _tensor(self.out.weight), _tensor(self.out.bias)

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        """Input embedding of each item id."""
        if self.embedding is None:
            if self._sparse_table():
                return F.embedding(items, self.out.weight, sparse=True)
            return F.embedding(items, self.output_weights()[0])
        return self.embedding(items)

    def init_hidden(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """A zero hidden state (layers, batch, hidden_size): the state at the start of every session."""
        return torch.zeros(self.layers, batch, self.hidden_size, device=device)

    def step(self, items: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One click per session: (output state (b, H) used for scoring, new hidden (layers, b, H))."""
        return self._cell(self.embed(items), hidden)

    def _cell(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``step`` from the embedded clicks ``x`` (b, d)."""
        x = self.drop_embed(x)
        out, hidden = self.gru(x.unsqueeze(0), hidden)
        h = self.drop_hidden(out.squeeze(0))
        if self.carry_dropout and self.training and self.dropout_p_hidden > 0:
            hidden = torch.cat([hidden[:-1], h[None]])      # the dropped-out state is what the next step sees
        if self.elu_param > 0:
            h = F.elu(h, alpha=self.elu_param)
        return h, hidden

    def item_scores(self, h: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``items`` (all items when None) for each state row: (b, len(items))."""
        if items is None:
            return self.out(h)
        if self._sparse_table():   # gradients of only the rows read (a sparse tensor): row-wise optimiser updates
            w = F.embedding(items, self.out.weight, sparse=True)
            b = self.out.bias[items]   # the bias keeps a dense gradient (n_items floats; a sparse one through a
            # view is not supported by autograd), so with momentum its absent rows still move by their decaying momentum
            return torch.addmm(b[None, :], h, w.T)
        w, b = self.output_weights()
        return h @ w[items].T + b[items]

    def train_scores(self, items: torch.Tensor, hidden: torch.Tensor, candidates: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training step, fused: (``step(items, hidden)``, ``item_scores(h, candidates)``) as (h, hidden, scores).

        With ``sparse_items`` the item table is read once per step, through the distinct rows among ``items`` and
        ``candidates`` (~1,200 of 2,080 candidates on YooChoose at n_sample=2048): the scores are computed against those
        rows and copied out to the candidate columns, so the product is over fewer rows and the table's gradient is
        already one row per item. The rows updated are those of the official implementation: inputs and candidates for
        the item table, candidates only for the item bias. Same values as the unfused path (tested)."""
        if not (self._sparse_table() and self.embedding is None):
            h, hidden = self.step(items, hidden)
            return h, hidden, self.item_scores(h, candidates)
        b = len(items)
        rows, pos = unique_rows(torch.cat([items, candidates]), self.n_items)
        in_cand = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        in_cand[pos[b:]] = True
        w = _Rows.apply(self.out.weight, rows, None)
        bias = _Rows.apply(self.out.bias, rows, in_cand)
        h, hidden = self._cell(w.index_select(0, pos[:b]), hidden)
        return h, hidden, torch.addmm(bias, h, w.t()).index_select(1, pos[b:])

    def _plain_step(self) -> bool:
        """Whether the model is exactly the structure :meth:`xe_gradients` covers: training mode, one plain
        ``nn.GRU`` layer fed by the item table (constrained embedding, sparse item rows), no input dropout, no ELU, a
        plain ``nn.Linear`` output and ``nn.Dropout``, no hook on any module, every parameter a trainable float32 leaf.
        False once a callback prunes (a re-parametrised weight and a hook), quantizes or replaces a part. Checked on
        every step, so it reads the modules directly."""
        gru, out = self.gru, self.out
        return (self.training and self.embedding is None and self.sparse_items and self.layers == 1
                and self.elu_param == 0 and self.dropout_p_embed == 0 and type(gru) is nn.GRU and type(out) is nn.Linear
                and type(self.drop_hidden) is nn.Dropout and gru.bias and not gru.bidirectional
                and gru.proj_size == 0 and not gru.batch_first and out.bias is not None and not global_hooks()
                and plain_params(self, gru, out, self.drop_embed, self.drop_hidden))

    @torch.no_grad()
    def xe_gradients(self, items: torch.Tensor, state: torch.Tensor, candidates: torch.Tensor,
                     offsets: torch.Tensor | None = None, mask_duplicates: bool = True, sum_over: int | None = None,
                     xe_eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, list] | None:
        """One training step's gradients of the sampled cross-entropy (``models.base.sampled_loss`` with
        ``loss='cross-entropy'``, ``scores`` of :meth:`train_scores`, ``offsets`` added to them), written out: sets
        the GRU's ``.grad`` and returns ``(loss, new hidden state, rows)``, ``rows`` = ``(table, row ids, gradient
        rows)`` for the item table (the distinct input and candidate items) and the item bias (the candidates), for
        ``AdagradM.update_rows``. ``state`` is the detached state of :meth:`reset_state` (truncated BPTT of one
        step, as autograd's path). Dropout draws its mask as ``nn.Dropout`` does, so the forward and the new state
        equal autograd's bit for bit; the gradients agree to rounding (tested). None, with nothing set, where the
        model is not the structure this covers (:meth:`_plain_step`); the caller then takes autograd's path.

        Why (hand-written): a 480-unit step is 8 GEMMs (~5.6 ms of a ~10 ms step here) plus ~60 small ops, and
        autograd added its nodes, the GRU cell's composite backward and the sparse gradient tensors on top.
        ``experiment=gru4rec_xe_480`` on yoochoose-100k, 2 threads, AdagradM, one process: a step 14.1 vs 14.9 ms
        (median of 40 alternating 25-step rounds, faster in 37; the machine was slow that hour) and 9.4 vs 10.8 ms
        (10 rounds of 100, a quieter hour); a training epoch 14.6 vs 16.6 s (mean of 6 alternating one-epoch runs,
        faster in 5). Tried and not kept: the cell's backward as one numba kernel (0.125 vs 0.13 ms) and the dense
        Adagrad update split over two threads (no faster within the step)."""
        if not self._plain_step():
            return None
        b, H = len(items), self.hidden_size
        gru, W, bias = self.gru, self.out.weight, self.out.bias
        w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
        rows, pos = unique_rows(torch.cat([items, candidates]), self.n_items)
        p_in, p_cand = pos[:b], pos[b:]
        w_rows, b_rows = W.index_select(0, rows), bias.index_select(0, rows)
        x, h0 = w_rows.index_select(0, p_in), state[0]
        # the GRU cell as torch's CPU kernel computes it (aten RNN.cpp, GRUCell): same operators, same order
        gi, gh = torch.addmm(b_ih, x, w_ih.t()), torch.addmm(b_hh, h0, w_hh.t())
        r = gh[:, :H].add_(gi[:, :H]).sigmoid_()
        z = gh[:, H:2 * H].add_(gi[:, H:2 * H]).sigmoid_()
        gh_n = gh[:, 2 * H:].clone()
        n = gi[:, 2 * H:].add(gh[:, 2 * H:].mul_(r)).tanh_()
        h1 = (h0 - n).mul_(z).add_(n)
        p = self.dropout_p_hidden
        noise = torch.empty_like(h1).bernoulli_(1 - p).div_(1 - p) if p > 0 else None   # nn.Dropout's mask, drawn alike
        h = h1 * noise if noise is not None else h1
        s = torch.addmm(b_rows, h, w_rows.t()).index_select(1, p_cand)
        if offsets is not None:
            s.add_(offsets)
        diag = torch.arange(b, device=s.device)
        if mask_duplicates:
            dup = candidates[None, :] == candidates[:b, None]
            dup[diag, diag] = False
            s.masked_fill_(dup, float("-inf"))
        log_p = torch.log_softmax(s, 1)
        lp = log_p[diag, diag]                           # log p of each row's target
        if xe_eps > 0:   # row loss -log(p + eps); its gradient is that of -log p times sigmoid(log p - log eps)
            per_row = -torch.logaddexp(lp, torch.tensor(math.log(xe_eps), dtype=lp.dtype, device=lp.device))
            wgt = torch.sigmoid(lp - math.log(xe_eps))
        else:
            per_row, wgt = -lp, torch.ones_like(lp)
        norm = sum_over if sum_over is not None else b
        wgt = wgt / norm
        ds = log_p.exp_().mul_(wgt[:, None])             # d loss / d score: (softmax - onehot) * row weight
        ds[diag, diag] -= wgt
        # summed over each item's candidate columns: (b, distinct rows); along dim 1 it was ~0.1 ms faster than the
        # transposed index_add along dim 0 (b 48, 2,096 candidates, ~1,100 rows)
        ds_rows = torch.zeros(b, len(rows), dtype=ds.dtype, device=ds.device).index_add_(1, p_cand, ds)
        d_w = ds_rows.t() @ h                              # item rows, from the scores
        d_bias = ds_rows.sum(0)
        dh = ds_rows @ w_rows
        if noise is not None:
            dh.mul_(noise)
        # the cell's backward (h0 carries no gradient: the state was detached)
        da_n = dh * (1 - z) * (1 - n * n)
        da_z = dh * (h0 - n) * (z * (1 - z))
        da_r = da_n * gh_n * (r * (1 - r))
        d_gi = torch.cat([da_r, da_z, da_n], 1)
        d_gh = torch.cat([da_r, da_z, da_n * r], 1)
        w_ih.grad, b_ih.grad = d_gi.t() @ x, d_gi.sum(0)
        w_hh.grad, b_hh.grad = d_gh.t() @ h0, d_gh.sum(0)
        d_w.index_add_(0, p_in, d_gi @ w_ih)              # item rows, as the GRU's input
        in_cand = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        in_cand[p_cand] = True
        new_state = (h if self.carry_dropout and p > 0 else h1)[None]
        return per_row.sum() / norm, new_state, [(W, rows, d_w), (bias, rows[in_cand], d_bias[in_cand])]

    # --------------------------------------------------------------------------------------------- interface
    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the next click after each right-padded sequence ``seq`` (b, L) of ``lengths``.

        The GRU runs over the whole padded sequence in one call and each row's state is read at its last click (a GRU
        is causal, so padding after it changes nothing); only training with ``carry_dropout`` steps click by click."""
        if self.training and self.carry_dropout and self.dropout_p_hidden > 0:
            hidden = self.init_hidden(seq.shape[0], seq.device)
            h = torch.zeros(seq.shape[0], self.hidden_size, device=seq.device)
            for t in range(int(lengths.max())):
                live = (t < lengths)[:, None]
                h_t, hid_t = self.step(seq[:, t], hidden)
                h = torch.where(live, h_t, h)
                hidden = torch.where(live[None], hid_t, hidden)
            return self.item_scores(h)
        b = seq.shape[0]
        out, _ = self.gru(self.drop_embed(self.embed(seq.t())), self.init_hidden(b, seq.device))   # (L, b, H)
        last = out[(lengths - 1).clamp(min=0), torch.arange(b, device=seq.device)]
        h = self.drop_hidden(last * (lengths > 0)[:, None].to(last.dtype))   # an empty sequence keeps a zero state
        if self.elu_param > 0:
            h = F.elu(h, alpha=self.elu_param)
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
                "dropout_p_hidden": self.dropout_p_hidden, "elu_param": self.elu_param,
                "carry_dropout": self.carry_dropout, "init": self.init, "sparse_items": self.sparse_items}

    # --------------------------------------------------------------------- session-model contract (models/base.py)
    def init_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.init_hidden(batch, device)

    def advance(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step(items, state)

    def reset_state(self, state: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        """Truncated BPTT of one step (as the official code): the state carries over, its gradient does not."""
        return state.detach() * (~reset).to(state.dtype)[None, :, None]

    def select_state(self, state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The state of the sessions at ``rows`` only (a shrinking batch at the end of an epoch)."""
        return state[:, rows]

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
