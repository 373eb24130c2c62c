"""NCF models: shapes, a training step, the exact full-catalogue fast path, pre-training initialisation."""
import pytest
import torch

from recsys.models import build_model
from recsys.models.ncf import GMF, MLP, NeuMF

MODELS = [lambda: GMF(30, 50, 8), lambda: MLP(30, 50, [32, 16, 8], 0.1), lambda: MLP(30, 50, [16]),
          lambda: NeuMF(30, 50, 8, [32, 16, 8])]


@pytest.mark.parametrize("make", MODELS)
def test_forward_shapes_and_training_step(make):
    torch.manual_seed(0)
    m = make()
    u, i = torch.randint(0, 30, (64,)), torch.randint(0, 50, (64,))
    y = torch.randint(0, 2, (64,)).float()
    assert m(u, i).shape == (64,)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    before = [p.detach().clone() for p in m.parameters()]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m(u, i), y)
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, m.parameters()))


@pytest.mark.parametrize("make", MODELS)
def test_score_all_equals_pairwise_scores(make):
    torch.manual_seed(1)
    m = make().eval()
    for p in m.parameters():  # move away from the tiny init so differences would show
        torch.nn.init.normal_(p, std=0.5)
    users = torch.tensor([0, 7, 29])
    with torch.no_grad():
        fast = m.score_all(users)
        slow = m.score(users.repeat_interleave(50), torch.arange(50).repeat(3)).view(3, 50)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", MODELS)
def test_build_model_from_config_roundtrip(make):
    m = make()
    m2 = build_model(m.config())
    assert type(m2) is type(m) and m2.config() == m.config()


def test_neumf_pretrain_is_weighted_sum_of_branches():
    torch.manual_seed(2)
    g, p = GMF(10, 20, 4), MLP(10, 20, [16, 8, 4])
    n = NeuMF(10, 20, 4, [16, 8, 4])
    n.load_pretrained(g, p, alpha=0.5)
    u, i = torch.randint(0, 10, (32,)), torch.randint(0, 20, (32,))
    with torch.no_grad():
        expected = 0.5 * g(u, i) + 0.5 * p(u, i)
        torch.testing.assert_close(n(u, i), expected)
    with pytest.raises(ValueError, match="do not match"):
        n.load_pretrained(GMF(10, 20, 8), p)


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="model.factors"):
        GMF(10, 10, 0)
    with pytest.raises(ValueError, match="mlp_layers"):
        MLP(10, 10, [15, 8])
    with pytest.raises(ValueError, match="dropout"):
        MLP(10, 10, [16, 8], dropout=1.5)


def test_full_catalogue_blocks_of_any_size_score_alike():
    """tower_scores blocks users by a size chosen from the catalogue (16 at ML-1M, 2 at ML-20M): any block size must
    give the same scores."""
    from recsys.models.ncf import MLP

    torch.manual_seed(2)
    m = MLP(30, 50, layers=[16, 8, 4]).eval()
    users, w = torch.arange(23), torch.randn(4)
    with torch.no_grad():
        ref = m.tower_scores(users, w, chunk=16)
        for c in (None, 1, 2, 5):
            torch.testing.assert_close(m.tower_scores(users, w, chunk=c), ref, rtol=1e-5, atol=1e-5)


def _cat_path(m, u, i):
    """NeuMF's logits through the MLP's concatenation (the layer called as a module)."""
    mlp = m.mlp
    h = mlp.tower(torch.cat([mlp.user_embedding(u), mlp.item_embedding(i)], dim=-1))
    return m.predict(torch.cat([m.gmf.vector(u, i), h], dim=-1)).squeeze(-1)


def test_training_forward_without_the_concatenation_matches_it():
    """In training the MLP's first layer is summed over the user and item parts (no concatenation): the same logits and
    the same gradients of every parameter as the concatenated input, up to float32 rounding."""
    torch.manual_seed(3)
    m = NeuMF(30, 50, 8, [32, 16, 8]).train()
    u, i = torch.randint(0, 30, (64,)), torch.randint(0, 50, (64,))
    out = {}
    for name, fn in (("split", lambda: m(u, i)), ("cat", lambda: _cat_path(m, u, i))):
        m.zero_grad()
        logits = fn()
        (logits * torch.linspace(-1, 1, 64)).sum().backward()
        out[name] = logits.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}
    torch.testing.assert_close(out["split"][0], out["cat"][0], rtol=1e-5, atol=1e-6)
    for k, g in out["cat"][1].items():
        torch.testing.assert_close(out["split"][1][k], g, rtol=1e-5, atol=1e-6, msg=k)


def test_a_hook_on_the_first_layer_sees_the_concatenated_input():
    """Pruning and quantization observers hook the layer: it is then called as a module, on the concatenation."""
    torch.manual_seed(4)
    m = NeuMF(30, 50, 8, [32, 16, 8]).train()
    seen = []
    m.mlp.tower[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    u, i = torch.randint(0, 30, (64,)), torch.randint(0, 50, (64,))
    m(u, i).sum().backward()
    m.eval()
    with torch.no_grad():
        m(u, i)
    assert seen == [(64, 32), (64, 32)]
