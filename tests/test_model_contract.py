"""The model contract (recsys/models/base.py): techniques ask the model, and refuse loudly what it does not declare."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from recsys.compress.prune import StructuredPruning, prune_, shrink, strip_
from recsys.compress.quant import QuantConfig, attach_fake_quant, quantize_
from recsys.compress.quant.config import check_quant
from recsys.models import build_model, model_class
from recsys.models.base import Prunable, SessionModel, structured_support
from recsys.models.deepfm import DeepFM
from recsys.models.gru4rec import GRU4Rec
from recsys.models.ncf import GMF, MLP, NeuMF


class Attn(nn.Module):
    """A toy model holding an nn.MultiheadAttention next to an Embedding and a Linear."""

    family = "session"

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.attn, self.out = nn.Embedding(10, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        return self.out(self.attn(h, h, h)[0])


@pytest.mark.parametrize("model", [GMF(5, 7, 4), MLP(5, 7, [8, 4]), NeuMF(5, 7, 4, [8, 4]), GRU4Rec(9, 6),
                                   DeepFM([3, 4], n_dense=1, embed_dim=4, mlp_layers=[6])])
def test_every_model_declares_its_units_and_rebuilds_smaller(model):
    assert isinstance(model, Prunable) and structured_support(model)
    groups = model.unit_groups()
    small = build_model(model.resized({g.name: max(1, g.n // 2) for g in groups}))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    prune_(model, StructuredPruning(0.5))
    shrunk = shrink(strip_(model))
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in model.parameters())


def test_structured_pruning_refuses_a_model_without_unit_groups():
    with pytest.raises(ValueError, match="does not implement unit_groups"):
        prune_(Attn(), StructuredPruning(0.5))


def test_quantization_refuses_attention_it_cannot_quantize():
    for fn in (lambda m: quantize_(m, QuantConfig(bits=8)), lambda m: attach_fake_quant(m, QuantConfig(bits=8))):
        with pytest.raises(NotImplementedError, match="MultiheadAttention"):
            fn(Attn())


def test_quant_check_asks_the_model_class_which_kinds_it_has():
    errs = check_quant({"quant": {"bits": 8, "targets": ["gru"]}, "model": {"name": "neumf"}})
    assert any("model=neumf has no GRU" in e for e in errs)
    assert not check_quant({"quant": {"bits": 8, "targets": ["gru"]}, "model": {"name": "gru4rec"}})


def test_session_contract_drives_gru4rec_like_step():
    m = GRU4Rec(20, 8).eval()
    assert isinstance(m, SessionModel) and model_class({"name": "gru4rec"}) is GRU4Rec
    items = torch.tensor([1, 2, 3])
    s0 = m.init_state(3)
    h, s1 = m.advance(items, s0)
    h_ref, s_ref = m.step(items, m.init_hidden(3))
    assert torch.equal(h, h_ref) and torch.equal(s1, s_ref)
    reset = torch.tensor([True, False, True])
    kept = m.reset_state(s1, reset)
    assert torch.equal(kept[:, 0], torch.zeros_like(kept[:, 0])) and torch.equal(kept[:, 1], s1[:, 1])
    assert torch.equal(m.keep_state(s1, s0, ~reset)[:, 1], s1[:, 1])
