"""The served model's contract without a server (fast, synthetic): top-k in original ids with training items excluded,
given candidates, session requests, clear errors, id maps stored without pickle, and the runtime picked by timing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.models.gru4rec import GRU4Rec
from recsys.models.ncf import NeuMF
from recsys.serve.data import ServeData, serve_data
from recsys.serve.pyfunc import Recommender, RequestError
from recsys.serve.runtime import EagerScorer, make_scorer, pick_runtime


def ranking_setup(user_ids=None, item_ids=None):
    torch.manual_seed(0)
    model = NeuMF(5, 30, factors=4, mlp_layers=[8, 4]).eval()
    indptr = np.array([0, 3, 3, 5, 5, 5])           # user 0 saw items 0,1,2; user 2 saw 7,9
    indices = np.array([0, 1, 2, 7, 9])
    data = ServeData(np.asarray(item_ids if item_ids is not None else np.arange(100, 130)),
                     np.asarray(user_ids if user_ids is not None else np.arange(10, 15)), indptr, indices)
    return model, data, Recommender("ranking", EagerScorer(model, 30), data, model)


def test_full_catalogue_top_k_in_original_ids_without_training_items():
    model, data, rec = ranking_setup()
    ids, scores = rec.one({"user_id": 10, "k": 5})
    full = model.score_all(torch.tensor([0]))[0].detach().numpy().astype(np.float64)
    full[[0, 1, 2]] = -np.inf
    want = np.argsort(-full, kind="stable")[:5]
    assert ids == (want + 100).tolist() and np.allclose(scores, full[want])
    assert not {100, 101, 102} & set(rec.one({"user_id": 10, "k": 30})[0])
    assert len(rec.one({"user_id": 10, "k": 30})[0]) == 27          # k is capped by what can be recommended


def test_given_candidates_are_ranked_and_training_items_dropped():
    model, data, rec = ranking_setup()
    ids, scores = rec.one({"user_id": 12, "k": 10, "item_ids": [107, 103, 109, 120]})
    s = model.score(torch.tensor([2, 2]), torch.tensor([3, 20])).detach().numpy()
    assert sorted(ids) == [103, 120] and ids[0] == (103 if s[0] >= s[1] else 120)
    assert rec.one({"user_id": 12, "k": 3, "item_ids": []})[0] == rec.one({"user_id": 12, "k": 3})[0]
    answers = rec.predict([{"user_id": 11, "k": 2}, {"user_id": 13, "k": 4}, {"user_id": 12, "item_ids": [103, 120]}])
    assert [len(a["item_ids"]) for a in answers] == [2, 4, 2] and all(set(a) == {"item_ids", "scores"} for a in answers)
    alone = rec.one({"user_id": 13, "k": 4})                       # a batch answers each record as if alone
    assert answers[1]["item_ids"] == alone[0] and np.allclose(answers[1]["scores"], alone[1], rtol=1e-5)


def test_bad_requests_name_the_problem():
    _, _, rec = ranking_setup()
    with pytest.raises(RequestError, match="user_id 99 is not in the model's training data"):
        rec.one({"user_id": 99})
    with pytest.raises(RequestError, match="item_id 5 is not in the model's training data"):
        rec.one({"user_id": 10, "item_ids": [100, 5]})
    with pytest.raises(RequestError, match="k=0: must be a positive integer"):
        rec.one({"user_id": 10, "k": 0})
    with pytest.raises(RequestError, match="needs 'user_id'"):
        rec.one({"k": 3})


def test_string_ids_round_trip_without_pickle(tmp_path):
    users = np.array(["ann", "bob", "cy", "dee", "eve"])
    items = np.array([f"m{i}" for i in range(30)], dtype=object)   # object arrays (pandas) are stored as unicode
    model, data, rec = ranking_setup(users, items)
    path = data.save(tmp_path / "d.npz")
    back = ServeData.load(path)                                    # np.load(allow_pickle=False) inside
    assert back.item_ids.dtype.kind == "U" and back.user_index("bob") == 1
    again = Recommender("ranking", EagerScorer(model, 30), back, model)
    assert again.one({"user_id": "ann", "k": 4}) == rec.one({"user_id": "ann", "k": 4})
    assert again.one({"user_id": "ann", "k": 4})[0][0].startswith("m")


def test_session_request_matches_the_model_forward():
    torch.manual_seed(0)
    model = GRU4Rec(40, hidden_size=8).eval()
    data = ServeData(np.arange(1000, 1040), np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64),
                     np.zeros(0, dtype=np.int64))
    rec = Recommender("session", None, data, model)
    ids, scores = rec.one({"session": [1003, 1017, 1005], "k": 5})
    with torch.inference_mode():
        full = model(torch.tensor([[3, 17, 5]]), torch.tensor([3]))[0].numpy()
    assert ids == (np.argsort(-full, kind="stable")[:5] + 1000).tolist() and np.allclose(scores, np.sort(full)[::-1][:5])
    sub = rec.one({"session": [1003, 1017, 1005], "k": 2, "item_ids": [1001, 1002, 1039]})[0]
    assert sub == [i + 1000 for i in sorted([1, 2, 39], key=lambda i: -full[i])][:2]
    with pytest.raises(RequestError, match="needs 'session'"):
        rec.one({"user_id": 3})


def test_ctr_table_data_is_refused_with_a_reason():
    class Table:
        split = None
    with pytest.raises(ValueError, match="no users or items to recommend"):
        serve_data("ctr", Table())


def test_pick_runtime_times_eager_and_onnx_and_both_score_alike(tmp_path):
    model, data, _ = ranking_setup()
    best, timings, onnx = pick_runtime(model, 5, 30, tmp_path, threads=1, requests=5)
    assert best in ("eager", "onnx") and isinstance(timings["eager"], float) and isinstance(timings["onnx"], float)
    assert best == min(("eager", "onnx"), key=timings.get) and (onnx is not None) == (best == "onnx")
    ort = make_scorer("onnx", model, 30, tmp_path / "serve.onnx", 1)
    np.testing.assert_allclose(ort.score_all(3), EagerScorer(model, 30).score_all(3), atol=1e-5)
