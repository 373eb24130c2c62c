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
each (right-padded) sequence; ``step(items, hidden)`` for session-parallel training and serving; ``config()``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


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


def sampled_loss(model: GRU4Rec, h: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, loss: str = "cross-entropy",
                 bpreg: float = 0.0, logq: float = 0.0, log_pop: torch.Tensor | None = None) -> torch.Tensor:
    """GRU4Rec's training loss on one session-parallel step.

    Candidates = the minibatch's own targets (each row's target is the diagonal; the other rows' targets are its
    in-batch negatives, i.e. popularity-sampled) followed by ``negatives`` (extra shared samples). Candidates equal to a
    row's target are masked out as negatives.

    * ``cross-entropy``: softmax over the candidates; ``logq`` > 0 subtracts ``logq * log(popularity)`` from each
      candidate's score (the sampled-softmax correction for popularity-sampled negatives).
    * ``bpr-max``: -log sum_j softmax(s_j) sigmoid(s_i - s_j) over the negatives j, plus ``bpreg`` * sum_j softmax(s_j) s_j^2.
    """
    cand = torch.cat([targets, negatives])
    scores = model.item_scores(h, cand)                                    # (b, b + n_sample)
    b = len(targets)
    same = cand[None, :] == targets[:, None]
    diag = torch.zeros_like(same)
    diag[torch.arange(b), torch.arange(b)] = True
    neg_mask = same & ~diag                                                # duplicates of the target: not negatives
    if loss == "cross-entropy":
        if logq > 0 and log_pop is not None:
            scores = scores - logq * log_pop[cand]
        scores = scores.masked_fill(neg_mask, float("-inf"))
        return F.cross_entropy(scores, torch.arange(b, device=h.device))
    if loss == "bpr-max":
        pos = scores[torch.arange(b), torch.arange(b)][:, None]
        not_neg = same                                                     # target itself and its duplicates
        weights = torch.softmax(scores.masked_fill(not_neg, float("-inf")), dim=1)
        term = (weights * torch.sigmoid(pos - scores)).masked_fill(not_neg, 0.0).sum(1)
        reg = (weights * scores * scores).masked_fill(not_neg, 0.0).sum(1)
        return (-torch.log(term + 1e-24) + bpreg * reg).mean()
    raise ValueError(f"model.loss={loss!r}: must be one of ['cross-entropy', 'bpr-max']")


LOSSES: Sequence[str] = ("cross-entropy", "bpr-max")
