"""Session data: the session-parallel batcher resets state exactly at session boundaries; unseen test items dropped;
data without order rejected with both names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.sessions import SessionParallelBatches, Sessions, load_session_data, order_problem


def make_sessions(lengths):
    items, offsets = [], [0]
    for s, n in enumerate(lengths):
        items += [100 * s + j for j in range(n)]      # item id encodes (session, position)
        offsets.append(offsets[-1] + n)
    items = np.array(items)
    return Sessions(np.array(offsets), items, np.ones(len(items), dtype=bool)), items.max() + 1


def test_batcher_resets_exactly_at_session_boundaries_and_covers_every_click():
    sessions, n_items = make_sessions([3, 2, 5, 2, 4, 3, 2, 6])
    it = SessionParallelBatches(sessions, batch_size=3, n_items=n_items, n_sample=4, seed=0)
    seen = set()
    last = [None] * 3
    for inputs, targets, reset, negs in it:
        assert negs.shape == (4,)
        for slot in range(3):
            x, y = int(inputs[slot]), int(targets[slot])
            assert y == x + 1                                  # the target is the next click of the same session
            new_session = x % 100 == 0
            assert bool(reset[slot]) == new_session            # reset iff this step starts a session
            if not new_session:
                assert last[slot] == x - 1                     # otherwise it continues the slot's previous click
            last[slot] = x
            seen.add((x, y))
    # the epoch ends when a finished slot cannot be refilled: every session started before then is complete
    started = {x // 100 for x, _ in seen}
    assert len(started) >= 6
    assert len(seen) == len(set(seen))


def test_batcher_skips_single_click_sessions_and_data_fraction_subsets():
    sessions, n_items = make_sessions([1, 4, 1, 3, 5, 2])
    it = SessionParallelBatches(sessions, 2, n_items, data_fraction=0.5, seed=3)
    used = it.sessions_for(0)
    assert set(used) <= {1, 3, 4, 5} and len(used) == 2
    inputs = torch.cat([b[0] for b in it])
    assert not any(int(x) // 100 in (0, 2) for x in inputs)


def test_order_problem_names_model_and_data():
    msg = order_problem({"name": "ml-1m-loo", "format": "csv", "time_col": None}, "gru4rec")
    assert "gru4rec" in msg and "ml-1m-loo" in msg
    assert order_problem({"name": "ml-100k", "format": "movielens"}, "gru4rec") is None


@pytest.mark.realdata
def test_yoochoose_drops_unseen_test_items(shared_data_dir, tmp_path):
    d = load_session_data({"name": "yoochoose", "format": "sessions", "source": "yoochoose-100k",
                           "train_file": "yoochoose-clicks-100k_train_full.txt",
                           "test_file": "yoochoose-clicks-100k_test.txt",
                           "val_file": "yoochoose-clicks-100k_train_valid.txt"}, shared_data_dir, tmp_path)
    assert d.n_items == 2933 and d.train.n_events == 70278 and d.train.n_sessions == 17794
    assert d.test.items.max() < d.n_items and np.diff(d.test.offsets).min() >= 2
    assert d.test.n_targets == d.test.n_events - d.test.n_sessions
    assert d.val.n_sessions > 0
    # without a val_file the sessions that start last are held out of training: their only items leave the catalogue
    held = load_session_data({"name": "y", "format": "sessions", "source": "yoochoose-100k",
                              "train_file": "yoochoose-clicks-100k_train_full.txt",
                              "test_file": "yoochoose-clicks-100k_test.txt"}, shared_data_dir, tmp_path)
    assert held.train.n_events < d.train.n_events and held.dropped_test_events > 0
    assert held.test.items.max() < held.n_items


@pytest.mark.realdata
def test_movielens_sequences_hold_out_last_two(shared_data_dir, tmp_path):
    d = load_session_data({"name": "ml-100k", "format": "movielens", "source": "ml-100k"}, shared_data_dir, tmp_path)
    assert d.test.n_sessions == d.val.n_sessions == d.train.n_sessions == 943
    assert d.test.n_targets == 943 and d.train.n_events + 2 * 943 == 100_000


def test_gru4rec_on_unordered_data_fails_before_training(tmp_path):
    from hydra import compose, initialize_config_dir

    from recsys.errors import ConfigError
    from recsys.pipeline import run

    conf = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.root_dir={tmp_path}", f"paths.data_dir={tmp_path}",
                                           "model=gru4rec", "data=ml-1m-loo"])
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert "model=gru4rec" in str(e.value) and "data=ml-1m-loo" in str(e.value)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.realdata
def test_session_parallel_evaluation_gives_the_padded_paths_ranks_on_real_sessions(shared_data_dir):
    """next_item_ranks (session-parallel slots, refilled, shrinking at the end) ranks every target click exactly as
    the padded click-by-click path: same multiset of ranks, so the same recall/MRR, on the first 400 yoochoose-100k
    test sessions with an untrained GRU4Rec."""
    from recsys.models.gru4rec import GRU4Rec
    from recsys.tasks.session import next_item_ranks, padded_next_item_ranks, session_metrics

    cfg = {"name": "yoochoose", "format": "sessions", "source": "yoochoose-100k",
           "train_file": "yoochoose-clicks-100k_train_full.txt", "test_file": "yoochoose-clicks-100k_test.txt"}
    data = load_session_data(cfg, shared_data_dir, shared_data_dir)
    t = data.test
    n = 400
    sub = Sessions(t.offsets[:n + 1], t.items[:t.offsets[n]], t.targets[:t.offsets[n]])
    torch.manual_seed(0)
    model = GRU4Rec(data.n_items, hidden_size=16)
    new, old = next_item_ranks(model, sub, batch_sessions=64), padded_next_item_ranks(model, sub, batch_sessions=64)
    assert len(new) == sub.n_targets > 1000
    assert torch.equal(new.sort().values, old.sort().values)
    assert session_metrics(new, (20, 5)) == session_metrics(old, (20, 5))


def test_torch_search_negatives_are_exactly_the_numpy_draws():
    """SessionParallelBatches._search (torch.searchsorted over the float64 cdf) returns np.searchsorted(cdf, u) for
    every draw, including draws on the cdf's own values, on a cdf with flat runs (zero-count items) and one dominant
    item."""
    counts = np.r_[np.zeros(50), 1e6, np.arange(1, 200) ** 3, np.zeros(30), 1.0]
    s = Sessions(np.array([0, 2]), np.array([0, 1]), np.array([False, True]))
    it = SessionParallelBatches(s, 1, len(counts), n_sample=8, sample_alpha=0.5, item_counts=counts)
    u = np.r_[np.random.default_rng(0).random(200_000), it.cdf, np.nextafter(it.cdf, 0), 0.0]
    u = u[u < 1]
    got = it._search(u)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), np.searchsorted(it.cdf, u))
