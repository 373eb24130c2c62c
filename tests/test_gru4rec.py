"""GRU4Rec: forward shapes, padded scoring = one session alone, sampled losses, a training step."""
from __future__ import annotations

import pytest
import torch

from recsys.models.gru4rec import GRU4Rec, sampled_loss


@pytest.mark.parametrize("constrained", [True, False])
def test_shapes_and_padding_does_not_change_scores(constrained):
    torch.manual_seed(0)
    m = GRU4Rec(20, hidden_size=8, layers=2, constrained_embedding=constrained).eval()
    seq = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    lengths = torch.tensor([4, 2])
    out = m(seq, lengths)
    assert out.shape == (2, 20)
    torch.testing.assert_close(out[1], m(torch.tensor([[7, 8]]), torch.tensor([2]))[0])
    h, hidden = m.step(seq[:, 0], m.init_hidden(2))
    assert h.shape == (2, 8) and hidden.shape == (2, 2, 8)
    scores, _ = m.score_next(torch.tensor([3]), m.init_hidden(1))
    assert scores.shape == (1, 20)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_sampled_loss_trains_the_next_item(loss):
    torch.manual_seed(0)
    m = GRU4Rec(12, hidden_size=16)
    opt = torch.optim.Adagrad(m.parameters(), lr=0.2)
    inputs = torch.arange(6)
    targets = (inputs + 1) % 12              # a deterministic successor per item
    first = None
    for _ in range(60):
        h, _ = m.step(inputs, m.init_hidden(6))
        value = sampled_loss(m, h, targets, torch.randint(0, 12, (8,)), loss, bpreg=0.1, logq=0.5,
                             log_pop=torch.zeros(12))
        opt.zero_grad()
        value.backward()
        opt.step()
        first = value.item() if first is None else first
    assert value.item() < first
    m.eval()
    h, _ = m.step(inputs, m.init_hidden(6))
    assert (m.item_scores(h).argmax(1) == targets).float().mean() >= 0.8


def test_duplicate_target_is_not_a_negative():
    torch.manual_seed(0)
    m = GRU4Rec(5, hidden_size=4)
    h = torch.randn(2, 4)
    a = sampled_loss(m, h, torch.tensor([1, 1]), torch.tensor([1, 1, 1]))   # every candidate is the target item
    assert torch.isfinite(a) and a.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="model.loss"):
        sampled_loss(m, h, torch.tensor([1, 2]), torch.tensor([3]), "top1")
