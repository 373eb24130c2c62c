"""DeepFM: forward shapes in both input modes, the FM term against its pairwise definition, a training step."""
from __future__ import annotations

import itertools

import pytest
import torch

from recsys.models import build_model
from recsys.models.deepfm import DeepFM


def table_model() -> DeepFM:
    torch.manual_seed(0)
    return DeepFM(field_dims=[5, 7, 3], n_dense=2, embed_dim=4, mlp_layers=[8, 4])


def pair_model() -> DeepFM:
    torch.manual_seed(0)
    m = DeepFM(field_dims=[6, 2, 3, 9, 4], bag_dims=[5], bag_len=3, embed_dim=4, mlp_layers=[8], n_users=6, n_items=9,
               n_user_fields=3)
    m.user_table.copy_(torch.stack([torch.arange(6), torch.arange(6) % 2, torch.arange(6) % 3], 1))
    m.item_table.copy_(torch.stack([torch.arange(9), torch.arange(9) % 4], 1))
    m.item_bags[:, 0, 0] = torch.arange(9) % 5 + 1
    m.item_bags[::2, 0, 1] = 2
    return m


def test_table_mode_shapes_and_fm_term_match_pairwise_definition():
    m = table_model().eval()
    cat = torch.tensor([[0, 1, 2], [4, 6, 0]])
    dense = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    assert m(cat, dense).shape == (2,)
    emb, first = m.fields(cat, dense, None)
    assert emb.shape == (2, 5, 4) and first.shape == (2,)
    pairwise = sum((emb[:, i] * emb[:, j]).sum(-1) for i, j in itertools.combinations(range(5), 2))
    deep = m.predict(m.mlp(emb.flatten(1))).squeeze(-1)
    torch.testing.assert_close(m(cat, dense), first + pairwise + deep)


def test_pair_mode_scores_users_by_items_and_mean_pools_bags():
    m = pair_model().eval()
    users, items = torch.tensor([0, 1, 5]), torch.tensor([2, 3, 8])
    assert m(users, items).shape == (3,)
    assert m.score_all(torch.tensor([0, 4])).shape == (2, 9)
    torch.testing.assert_close(m.score_all(torch.tensor([1]))[0, 3], m(torch.tensor([1]), torch.tensor([3]))[0])
    cat, _, bags = m.lookup(torch.tensor([0]), torch.tensor([0]))   # item 0 has genres {1, 2}
    emb, _ = m.fields(cat, None, bags)
    w = m.bag_embedding.weight
    torch.testing.assert_close(emb[0, -1], (w[1] + w[2]) / 2)


def test_training_step_lowers_the_loss_and_config_rebuilds_the_model():
    m = pair_model()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    users, items = torch.randint(0, 6, (64,)), torch.randint(0, 9, (64,))
    labels = (items % 2).float()
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(users, items), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    rebuilt = build_model(m.config())
    rebuilt.load_state_dict(m.state_dict())
    torch.testing.assert_close(rebuilt.eval()(users, items), m.eval()(users, items))


def test_xavier_normal_init_covers_every_table_and_layer_and_rebuilds():
    """``model.init=xavier_normal`` (RecBole's DeepFM init): Xavier-normal spread on each table and layer, zero biases,
    zero padding rows; the choice travels in ``config()``; an unknown name is refused with the key."""
    torch.manual_seed(0)
    m = DeepFM([400, 300], bag_dims=[20], bag_len=3, embed_dim=16, mlp_layers=[64, 32], n_dense=2,
               init="xavier_normal")
    for name, w in [("embedding", m.embedding.weight), ("linear", m.linear.weight),
                    ("bag_embedding", m.bag_embedding.weight[1:]), ("mlp.0", m.mlp[0].weight),
                    ("predict", m.predict.weight)]:
        fan_out, fan_in = w.shape if name != "bag_embedding" else (w.shape[0] + 1, w.shape[1])
        expect = (2.0 / (fan_in + fan_out)) ** 0.5
        assert abs(w.std().item() / expect - 1) < 0.25, name
    assert float(m.mlp[0].bias.abs().sum()) == 0 and float(m.predict.bias.abs().sum()) == 0
    assert float(m.bag_embedding.weight[0].abs().sum()) == 0 and float(m.bag_linear.weight[0].abs().sum()) == 0
    default = DeepFM([400, 300], embed_dim=16, mlp_layers=[64, 32])
    assert float(default.linear.weight.abs().sum()) == 0 and float(m.linear.weight.abs().sum()) > 0
    assert build_model(m.config()).init == "xavier_normal" and default.config()["init"] == "default"
    with pytest.raises(ValueError, match="model.init must be one of"):
        DeepFM([4], init="recbole")
