"""The served model's contract, as an MLflow ``pyfunc`` (logged "from code": nothing is pickled).

Input, one record per request row (``{"inputs": [...]}`` on ``/invocations``):
  ``{"user_id": <original id>, "k": 10}``            top-k over the full catalogue, the user's training items excluded
  ``{"user_id": ..., "k": 10, "item_ids": [...]}``   the given candidates (original ids) ranked, top-k of them
  ``{"session": [item ids], "k": 10}``               session models: next item after these clicks (none excluded)
``"item_ids": []`` = the full catalogue. Output, one per record: ``item_ids`` (original ids, best first) and ``scores``
(the model's logits).

The model is a type-hinted ``PythonModel`` (``predict(model_input: list[Request])``): MLflow infers the signature from
``Request`` and checks each record against it with pydantic, and the records reach ``predict`` as they came, without
the pandas DataFrame round trip and the column-schema enforcement a column signature costs on every request (profiled:
over half of an in-process request). A request is scored as a batch: one runtime call for all its full-catalogue
records and one for all its candidate records.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pydantic
from mlflow.pyfunc import PythonModel

DEFAULT_K = 10


class Request(pydantic.BaseModel):
    """One record of the contract (ids are the data's original ids: integers or strings)."""

    user_id: int | str | None = None
    k: int | None = None
    item_ids: list[int | str] | None = None
    session: list[int | str] | None = None


class Answer(pydantic.BaseModel):
    """One answer: the top-k original item ids, best first, and their scores."""

    item_ids: list[int | str]
    scores: list[float]


class RequestError(ValueError):
    """A request the contract does not accept (answered as HTTP 400 by the scoring server)."""


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _k(rec: dict, n: int) -> int:
    k = rec.get("k")
    if _missing(k):
        return min(DEFAULT_K, n)
    if isinstance(k, bool) or not float(k).is_integer() or int(k) < 1:
        raise RequestError(f"k={k!r}: must be a positive integer")
    return min(int(k), n)


def _fields(rec: Any) -> dict:
    """A record as a plain dict (a validated ``Request`` or a dict given in-process)."""
    if isinstance(rec, pydantic.BaseModel):
        return rec.__dict__
    if not isinstance(rec, dict):
        raise RequestError(f"record {rec!r}: must be an object like {{\"user_id\": 1, \"k\": 10}}")
    return rec


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of the k best scores, best first; ``exclude`` positions never returned (``top_k_rows`` of
    one row, so a single request and a batch rank alike)."""
    ex = np.zeros(0, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    return top_k_rows(np.asarray(scores)[None], [k], np.zeros(len(ex), dtype=np.int64), ex)[0]


def top_k_rows(scores: np.ndarray, ks: list[int], rows: np.ndarray, cols: np.ndarray) -> list[tuple[np.ndarray,
                                                                                                   np.ndarray]]:
    """``top_k`` of every row of a (batch, items) score matrix at once; (rows[i], cols[i]) entries are excluded."""
    s = np.asarray(scores, dtype=np.float64).copy()
    s[rows, cols] = -np.inf
    kmax = min(max(ks), s.shape[1])
    if kmax <= 0:
        return [(np.zeros(0, dtype=np.int64), np.zeros(0)) for _ in ks]
    part = np.argpartition(-s, kmax - 1, axis=1)[:, :kmax]
    ps = np.take_along_axis(s, part, axis=1)
    # argpartition keeps an arbitrary subset of the items tied at the k-th score: where more items than fit reach that
    # score, the row is re-selected from every item at or above it, so ties go to the lower index as promised.
    kth = ps.min(axis=1)
    over = np.flatnonzero(np.isfinite(kth) & ((s >= kth[:, None]).sum(axis=1) > kmax))
    for i in over:
        idx = np.flatnonzero(s[i] >= kth[i])
        part[i] = idx[np.lexsort((idx, -s[i, idx]))][:kmax]
    ps = np.take_along_axis(s, part, axis=1)
    order = np.take_along_axis(part, np.lexsort((part, -ps), axis=1), axis=1)  # ties: lower index first
    best = np.take_along_axis(s, order, axis=1)
    out = []
    for i, k in enumerate(ks):
        keep = min(k, int(np.isfinite(best[i]).sum()))
        out.append((order[i, :keep], best[i, :keep]))
    return out


class Recommender:
    """Top-k recommendations in original ids from a scorer (``recsys.serve.runtime``) and the id maps."""

    def __init__(self, family: str, scorer: Any, data: Any, model: Any = None) -> None:
        self.family, self.scorer, self.data, self.model = family, scorer, data, model

    def one(self, rec: dict) -> tuple[list, list]:
        """The answer to one record: (item ids, scores)."""
        ans = self.predict([rec])[0]
        return ans["item_ids"], ans["scores"]

    def predict(self, records: list) -> list[dict[str, list]]:
        """Answers to a request's records, in order: ``{"item_ids": [...], "scores": [...]}`` each."""
        recs = [_fields(r) for r in records]
        if self.family == "session":
            pairs = [self._session(r) for r in recs]
        else:
            pairs = self._ranking(recs)
        return [{"item_ids": ids, "scores": sc} for ids, sc in pairs]

    def _ranking(self, recs: list[dict]) -> list[tuple[list, list]]:
        for r in recs:
            if _missing(r.get("user_id")):
                raise RequestError(f"record {r!r}: needs 'user_id' (an original user id)")
            if not _missing(r.get("session")):
                raise RequestError(f"record {r!r}: 'session' is for session models; this one takes 'user_id'")
        try:
            users = self.data.user_indices([r["user_id"] for r in recs])
            given = {i: self.data.item_index(list(r["item_ids"])) for i, r in enumerate(recs)
                     if not _missing(r.get("item_ids")) and len(r["item_ids"])}
        except KeyError as e:
            raise RequestError(str(e.args[0])) from None
        full = [i for i in range(len(recs)) if i not in given]
        ks = {i: _k(recs[i], self.data.n_items if i not in given else len(given[i])) for i in range(len(recs))}
        out: list[Any] = [None] * len(recs)
        ids = self.data.item_ids
        if full:  # one runtime call for every full-catalogue record, training items masked in one assignment
            seen = [self.data.seen(int(users[i])) for i in full]
            rows = np.repeat(np.arange(len(full)), [len(x) for x in seen])
            cols = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
            best = top_k_rows(self.scorer.score_all_batch(users[full]), [ks[i] for i in full], rows, cols)
            for i, (pos, sc) in zip(full, best):
                out[i] = (ids[pos].tolist(), sc.tolist())
        if given:  # one runtime call for every candidate record
            cand = list(given)
            scores = self.scorer.score_pairs(np.repeat(users[cand], [len(given[i]) for i in cand]),
                                             np.concatenate([given[i] for i in cand]))
            start = 0
            for i in cand:
                g = given[i]
                s = scores[start:start + len(g)]
                start += len(g)
                pos, sc = top_k(s, ks[i], np.flatnonzero(np.isin(g, self.data.seen(int(users[i])))))
                out[i] = (ids[g[pos]].tolist(), sc.tolist())
        return out

    def _session(self, rec: dict) -> tuple[list, list]:
        import torch

        clicks = rec.get("session")
        if _missing(clicks) or not len(clicks):
            raise RequestError(f"record {rec!r}: a session model needs 'session': [item ids clicked so far]")
        try:
            idx = torch.as_tensor(self.data.item_index(list(clicks)))
            cands = rec.get("item_ids")
            given = None if _missing(cands) or not len(cands) else self.data.item_index(list(cands))
        except KeyError as e:
            raise RequestError(str(e.args[0])) from None
        k = _k(rec, self.data.n_items if given is None else len(given))
        with torch.inference_mode():
            state = self.model.init_state(1)     # the session-model contract (recsys.models.base.SessionModel)
            for i in idx:
                h, state = self.model.advance(i.view(1), state)
            if given is None:
                pos, sc = top_k(self.model.item_scores(h)[0].float().numpy(), k)
                return self.data.item_ids[pos].tolist(), sc.tolist()
            scores = self.model.item_scores(h, torch.as_tensor(given))[0].float().numpy()
        pos, sc = top_k(scores, k)
        return self.data.item_ids[given[pos]].tolist(), sc.tolist()

    def warm(self, rounds: int = 3) -> None:
        """A few requests of each kind at load time, so the first client request does not pay the runtime's
        one-off allocations (ONNX Runtime arenas, torch kernels)."""
        items = self.data.item_ids[:min(100, self.data.n_items)].tolist()
        if self.family == "session":
            recs = [{"session": items[:3]}, {"session": items[:3], "item_ids": items}]
        elif len(self.data.user_ids):
            user = self.data.user_ids[0].item()
            recs = [{"user_id": user}, {"user_id": user, "item_ids": items}]
        else:
            return
        for _ in range(rounds):
            for r in recs:
                self.predict([r])


def load_recommender(artifacts: dict[str, str], config: dict[str, Any]) -> Recommender:
    """Rebuild the recommender from the logged files: artifact (.pt), id maps (.npz), optional .onnx."""
    import torch

    from recsys.export.artifact import load_artifact
    from recsys.serve.data import ServeData
    from recsys.serve.runtime import make_scorer

    torch.set_num_threads(int(config.get("threads", 1)))
    model = load_artifact(artifacts["artifact"])
    data = ServeData.load(artifacts["serve_data"])
    family = config["family"]
    scorer = None if family == "session" else make_scorer(config["runtime"], model, data.n_items,
                                                          artifacts.get("onnx"), int(config.get("threads", 1)))
    return Recommender(family, scorer, data, model)


class RecsysPyfunc(PythonModel):
    """MLflow wrapper of ``Recommender``: loads the artifact on the runtime chosen at logging time, warms it."""

    def load_context(self, context):
        self.rec = load_recommender(dict(context.artifacts), dict(context.model_config or {}))
        self.rec.warm()

    def predict(self, context, model_input: list[Request], params: dict[str, Any] | None = None) -> list[Answer]:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            return self.rec.predict(model_input)   # plain dicts, shaped as ``Answer`` (JSON-encoded as they are)
        except RequestError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
