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


def _autograd_bce(m, u, i, y):
    """Loss and every parameter's gradient by autograd (tables' gradients dense)."""
    m.zero_grad()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m(u, i), y)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}


@pytest.mark.parametrize("layers", [[16], [32, 16, 8], [24, 12]])
def test_hand_written_bce_gradients_equal_autograds(layers):
    """NeuMF.bce_gradients: the loss, the dense layers' gradients and the tables' row gradients (repeated ids summed)
    of autograd on forward, for one-, two- and three-layer towers."""
    torch.manual_seed(5)
    m = NeuMF(30, 50, 8, layers).train()
    u = torch.cat([torch.randint(0, 30, (60,)), torch.full((4,), 3)])    # user 3 repeated
    i = torch.randint(0, 50, (64,))
    y = (torch.rand(64) < 0.3).float()
    loss_ref, ref = _autograd_bce(m, u, i, y)
    m.zero_grad(set_to_none=True)
    loss, rows = m.bce_gradients(u, i, y)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-7)
    names = {id(p): k for k, p in m.named_parameters()}
    tables = {names[id(p)] for p, _, _ in rows}
    assert tables == {"gmf.user_embedding.weight", "gmf.item_embedding.weight", "mlp.user_embedding.weight",
                      "mlp.item_embedding.weight"}
    for p, ids, vals in rows:
        assert p.grad is None and vals.shape == (64, p.shape[1])
        torch.testing.assert_close(torch.zeros_like(p).index_add_(0, ids, vals), ref[names[id(p)]],
                                   rtol=1e-5, atol=1e-7, msg=names[id(p)])
    for k, p in m.named_parameters():
        if k not in tables:
            torch.testing.assert_close(p.grad, ref[k], rtol=1e-5, atol=1e-7, msg=k)


def test_hand_written_bce_gradients_step_aside_for_what_they_do_not_cover():
    """Dropout, a pruned (hooked) layer, a replaced layer, a frozen parameter or a hook on the model: None, and no
    gradient set (the training step then takes autograd's path)."""
    from torch.nn.utils import prune

    u, i, y = torch.randint(0, 30, (16,)), torch.randint(0, 50, (16,)), torch.ones(16)
    torch.manual_seed(6)
    assert NeuMF(30, 50, 8, [32, 16, 8]).bce_gradients(u, i, y) is not None
    changes = {
        "dropout": lambda m: NeuMF(30, 50, 8, [32, 16, 8], dropout=0.2),
        "pruned": lambda m: prune.l1_unstructured(m.mlp.tower[1], "weight", amount=0.5) and m,
        "replaced": lambda m: setattr(m.mlp.tower, "4", torch.nn.Sequential(torch.nn.Linear(16, 8))) or m,
        "frozen": lambda m: m.gmf.user_embedding.weight.requires_grad_(False) is None or m,
        "hooked": lambda m: m.register_forward_hook(lambda *a: None) and m,
        "embedding padding": lambda m: setattr(m.gmf.item_embedding, "padding_idx", 0) or m,
    }
    for name, change in changes.items():
        m = change(NeuMF(30, 50, 8, [32, 16, 8]))
        assert m.bce_gradients(u, i, y) is None, name
        assert all(p.grad is None for p in m.parameters()), name
