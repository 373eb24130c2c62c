"""The served model's contract, as an MLflow ``pyfunc`` (logged "from code": nothing is pickled).

Input, one record per request row (``{"dataframe_records": [...]}`` or ``{"inputs": [...]}`` on ``/invocations``):
  ``{"user_id": <original id>, "k": 10}``            top-k over the full catalogue, the user's training items excluded
  ``{"user_id": ..., "k": 10, "item_ids": [...]}``   the given candidates (original ids) ranked, top-k of them
  ``{"session": [item ids], "k": 10}``               session models: next item after these clicks (none excluded)
A request's records share their keys (MLflow enforces one schema per request): ``"item_ids": []`` = full catalogue.
Output, one row per record: ``item_ids`` (original ids, best first) and ``scores`` (the model's logits).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULT_K = 10


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


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of the k best scores, best first; ``exclude`` positions never returned."""
    s = np.asarray(scores, dtype=np.float64).copy()
    if exclude is not None and len(exclude):
        s[exclude] = -np.inf
    k = min(k, int(np.isfinite(s).sum()))
    part = np.argpartition(-s, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
    order = part[np.lexsort((part, -s[part]))]  # ties: lower index first, so every runtime agrees
    return order, s[order]


class Recommender:
    """Top-k recommendations in original ids from a scorer (``recsys.serve.runtime``) and the id maps."""

    def __init__(self, family: str, scorer: Any, data: Any, model: Any = None) -> None:
        self.family, self.scorer, self.data, self.model = family, scorer, data, model

    def one(self, rec: dict) -> tuple[list, list]:
        if self.family == "session":
            return self._session(rec)
        if _missing(rec.get("user_id")):
            raise RequestError(f"record {rec!r}: needs 'user_id' (an original user id)")
        try:
            user = self.data.user_index(rec["user_id"])
            cands = rec.get("item_ids")
            given = None if _missing(cands) or not len(cands) else self.data.item_index(list(cands))
        except KeyError as e:
            raise RequestError(str(e.args[0])) from None
        if given is None:
            pos, sc = top_k(self.scorer.score_all(user), _k(rec, self.data.n_items), self.data.seen(user))
            return self.data.item_ids[pos].tolist(), sc.tolist()
        pos, sc = top_k(self.scorer.score(user, given), _k(rec, len(given)), np.flatnonzero(
            np.isin(given, self.data.seen(user))))
        return self.data.item_ids[given[pos]].tolist(), sc.tolist()

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
        with torch.inference_mode():
            state = self.model.init_state(1)     # the session-model contract (recsys.models.base.SessionModel)
            for i in idx:
                h, state = self.model.advance(i.view(1), state)
            if given is None:
                pos, sc = top_k(self.model.item_scores(h)[0].float().numpy(), _k(rec, self.data.n_items))
                return self.data.item_ids[pos].tolist(), sc.tolist()
            scores = self.model.item_scores(h, torch.as_tensor(given))[0].float().numpy()
        pos, sc = top_k(scores, _k(rec, len(given)))
        return self.data.item_ids[given[pos]].tolist(), sc.tolist()

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        rows = [self.one(r) for r in frame.to_dict(orient="records")]
        return pd.DataFrame({"item_ids": [r[0] for r in rows], "scores": [r[1] for r in rows]})


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
    """MLflow wrapper of ``Recommender``: loads the artifact on the runtime chosen at logging time."""

    def load_context(self, context):
        self.rec = load_recommender(dict(context.artifacts), dict(context.model_config or {}))

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        try:
            return self.rec.predict(frame)
        except RequestError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
