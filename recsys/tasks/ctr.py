"""CTR task (DeepFM): pointwise log-loss on labelled rows; AUC and logloss; on MovieLens also the NCF ranking protocol.

Two data kinds share the task:

* **pairs** (MovieLens): the same ``ImplicitSplit`` as NCF (positives + fresh sampled negatives each epoch, 99 fixed
  evaluation negatives), with side features held by the model. Test AUC / logloss are computed over the test
  candidates (each user's held-out positive, label 1, and its 99 negatives, label 0), pooled over users; HR@10 /
  NDCG@10 over the same candidates, so DeepFM and NeuMF rows share a table.
* **table** (Criteo): rows with labels; AUC / logloss on the held-out test rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn

from recsys.data.config import validate_data_cfg
from recsys.data.ctr import (
    CTRTable,
    SideFeatures,
    movielens_side_features,
    parse_criteo_cfg,
    side_feature_folder,
)
from recsys.data.ctr_datamodule import PairsDataModule, TableDataModule
from recsys.data.ctr_table import parse_ctr_cfg, read_ctr_table
from recsys.data.splits import ImplicitSplit, build_split
from recsys.errors import ConfigError
from recsys.evaluation import metrics as M
from recsys.evaluation.protocols import ranking_metrics, sampled_scores
from recsys.measure.latency import LatencyConfig, measure_latency, table_latency
from recsys.tasks.base import TaskFamily, TrainableTask, model_kwargs

TRAIN_KEYS = ("min_rating", "objective")


@dataclass(eq=False)
class CTRData:
    """What the CTR family trains on: an implicit split + side features (``pairs``) or an encoded table (``table``)."""

    kind: str
    name: str
    checksum: str
    split: ImplicitSplit | None = None
    side: SideFeatures | None = None
    table: CTRTable | None = None


class CTRTask(TrainableTask):
    """BCE on labelled rows; per epoch logs ``<stage>/epoch_val_auc`` (+ ``epoch_val_hr_at_k`` on pairs)."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
                 stage: str = "dense", topk: int = 10) -> None:
        super().__init__(model, lr, optimizer, weight_decay, stage)
        self.topk = topk
        self.loss_fn = nn.BCEWithLogitsLoss()
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._ranks: list[torch.Tensor] = []
        # Manual optimization, as the ranking and session tasks: Lightning's automatic loop and a per-step self.log
        # cost ~1 ms a step; the epoch's loss is summed on the tensor and logged once (TrainableTask).
        self.automatic_optimization = False

    def on_fit_start(self) -> None:
        data = getattr(getattr(self.trainer, "datamodule", None), "ctr_data", None)
        if data is not None:   # a freshly built user-item model: copy the side-feature tables in before training
            CTRFamily.attach_side_features(self.model, data)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        a, b, labels = batch[:3]
        logits = self.model(a, b)
        loss = self.loss_fn(logits, labels)
        return self.manual_step(self.add_extra_losses(loss, batch, logits), len(labels))

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        if len(batch) == 2:                       # pairs: (users, candidates), column 0 = positive
            users, cands = batch
            s = self.model(users[:, None].expand_as(cands).reshape(-1), cands.reshape(-1)).view(cands.shape)
            self._ranks.append(M.rank_of_target(s, s[:, 0]))
            lab = torch.zeros_like(s)
            lab[:, 0] = 1.0
            self._scores.append(s.flatten())
            self._labels.append(lab.flatten())
        else:
            cat, dense, labels = batch
            self._scores.append(self.model(cat, dense))
            self._labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        if not self._scores:
            return
        s, y = torch.cat(self._scores), torch.cat(self._labels)
        self._scores.clear()
        self._labels.clear()
        self.log(f"{self.stage}/epoch_val_auc", M.auc(s, y), prog_bar=True)
        self.log(f"{self.stage}/epoch_val_logloss", M.logloss(s, y))
        if self._ranks:
            ranks = torch.cat(self._ranks)
            self._ranks.clear()
            self.log(f"{self.stage}/epoch_val_hr_at_{self.topk}", M.hit_rate_at_k(ranks, self.topk), prog_bar=True)


def _label_metrics(scores: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}auc": float(M.auc(scores, labels)), f"{prefix}logloss": float(M.logloss(scores, labels))}


class CTRFamily(TaskFamily):
    """DeepFM-style models: MovieLens with side features (pairs) or Criteo-format logs (table)."""

    name = "ctr"
    monitor = "val_auc"

    def check(self, cfg: dict[str, Any]) -> list[str]:
        data = cfg.get("data", {}) or {}
        paths = cfg.get("paths", {}) or {}
        try:
            if data.get("format") == "criteo":
                parse_criteo_cfg(data)
            elif data.get("format") in ("ctr_csv", "libfm"):
                parse_ctr_cfg(data)
            elif data.get("format") == "sessions":
                return [f"model={cfg.get('model', {}).get('name')} (a CTR model) cannot read data={data.get('name')}: "
                        "format 'sessions' has no user or label fields; use data=ml-1m-loo, ml-100k or criteo."]
            else:
                validate_data_cfg(data, data_dir=paths.get("data_dir"), cache_dir=paths.get("cache_dir"))
        except ConfigError as e:
            return [str(e)]
        return []

    def load_data(self, cfg: Any) -> CTRData:
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
        if data_cfg.get("format") in ("criteo", "ctr_csv", "libfm"):
            t = read_ctr_table(data_cfg, cfg.paths.data_dir, cfg.paths.cache_dir, int(cfg.seed))
            return CTRData("table", t.name, t.checksum, table=t)
        min_rating = cfg.model.get("min_rating")
        if data_cfg.get("format") == "movielens" and data_cfg.get("min_rating") is None and min_rating is not None:
            data_cfg["min_rating"] = float(min_rating)   # star ratings: rating >= model.min_rating is a positive
        split = build_split(data_cfg, data_dir=cfg.paths.data_dir, cache_dir=cfg.paths.cache_dir, seed=cfg.seed)
        folder = side_feature_folder(str(data_cfg["source"]), cfg.paths.data_dir, cfg.paths.cache_dir)
        side = movielens_side_features(folder, split.user_ids, split.item_ids)
        return CTRData("pairs", split.name, split.checksum, split=split, side=side)

    def data_summary(self, data: CTRData) -> tuple[dict[str, str], dict[str, float]]:
        tags = {"dataset": data.name, "dataset_checksum": data.checksum, "ctr_data": data.kind}
        if data.kind == "table":
            t = data.table
            return {**tags, "split": t.split_rule}, {
                "data/n_rows": len(t.labels), "data/n_train": len(t.train_idx), "data/n_test": len(t.test_idx),
                "data/positive_rate": float(t.labels.mean()), "data/skipped_lines": t.skipped_lines,
                "data/n_features": float(sum(t.field_dims) + sum(t.bag_dims) + t.dense.shape[1])}
        s = data.split
        return {**tags, **s.tags()}, {
            "data/n_users": s.n_users, "data/n_items": s.n_items, "data/n_train": len(s.train_users),
            "data/n_test": len(s.test_users), "data/n_features": float(sum(data.side.field_dims)),
            "data/skipped_lines": s.skipped_lines}

    def model_spec(self, model_cfg: dict[str, Any], data: CTRData) -> dict[str, Any]:
        kw = {k: v for k, v in model_kwargs(model_cfg).items() if k not in TRAIN_KEYS}
        if data.kind == "table":
            return {**kw, "field_dims": data.table.field_dims, "n_dense": data.table.dense.shape[1],
                    "bag_dims": data.table.bag_dims, "bag_len": data.table.bag_len}
        sd = data.side
        return {**kw, "field_dims": sd.field_dims, "bag_dims": sd.bag_dims, "bag_len": sd.item_bags.shape[2],
                "n_users": data.split.n_users, "n_items": data.split.n_items, "n_user_fields": sd.user_table.shape[1]}

    @staticmethod
    @torch.no_grad()
    def attach_side_features(model: nn.Module, data: CTRData) -> None:
        """Copy the data's side-feature tables into a user-item DeepFM (they ship with its weights)."""
        if data.kind != "pairs" or not getattr(model, "n_users", 0):
            return
        if int(model.user_table.abs().sum()) == 0:
            model.user_table.copy_(torch.from_numpy(data.side.user_table))
            model.item_table.copy_(torch.from_numpy(data.side.item_table))
            model.item_bags.copy_(torch.from_numpy(data.side.item_bags))

    def make_task(self, model: nn.Module, cfg: Any, stage: str, lr: float, optimizer: str) -> CTRTask:
        return CTRTask(model, lr=lr, optimizer=optimizer, weight_decay=cfg.train.weight_decay, stage=stage,
                       topk=int(cfg.eval.topk[0]))

    def make_datamodule(self, data: CTRData, cfg: Any, data_fraction: float = 1.0) -> L.LightningDataModule:
        if data.kind == "table":
            return TableDataModule(data.table, cfg.train.batch_size, int(cfg.seed), data_fraction)
        return PairsDataModule(data, data.split, batch_size=cfg.train.batch_size, num_negatives=cfg.train.num_negatives,
                                 seed=cfg.seed, eval_batch_users=cfg.eval.batch_users, data_fraction=data_fraction)

    def samples_per_epoch(self, data: CTRData, cfg: Any, data_fraction: float = 1.0) -> float:
        if data.kind == "table":
            return max(1, round(len(data.table.train_idx) * data_fraction))
        return len(data.split.train_users) * data_fraction * (1 + cfg.train.num_negatives)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: CTRData, cfg: Any) -> dict[str, float]:
        """AUC / logloss on test (and validation); on pairs also HR / NDCG / MRR@k with the sampled negatives."""
        self.attach_side_features(model, data)
        model.eval()
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        if data.kind == "table":
            t = data.table
            for prefix, rows in (("", t.test_idx), ("val_", t.val_idx)):
                r = torch.from_numpy(rows)
                s = torch.cat([model.score(torch.from_numpy(t.cat)[r[i:i + 8192]], torch.from_numpy(t.dense)[r[i:i + 8192]])
                               for i in range(0, len(r), 8192)])
                out.update(_label_metrics(s, torch.from_numpy(t.labels)[r], prefix))
            out["eval_seconds"] = time.perf_counter() - t0
            return out
        sp, ks = data.split, tuple(int(k) for k in cfg.eval.topk)
        for prefix, users, cands in (("", sp.test_users, sp.test_candidates()), ("val_", sp.val_users, sp.val_candidates())):
            s = sampled_scores(model, users, cands, int(cfg.eval.batch_users))
            lab = torch.zeros_like(s)
            lab[:, 0] = 1.0
            out.update(_label_metrics(s.flatten(), lab.flatten(), prefix))
            m = ranking_metrics(M.rank_of_target(s, s[:, 0]), ks, prefix)
            out.update({k: v for k, v in m.items() if not (prefix and k.startswith("val_mrr"))})
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def example_inputs(self, data: CTRData, n: int = 4096) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        if data.kind == "table":
            r = torch.from_numpy(data.table.test_idx[:n])
            return torch.from_numpy(data.table.cat)[r], torch.from_numpy(data.table.dense)[r]
        sp = data.split
        return (torch.randint(0, sp.n_users, (n,), generator=g), torch.randint(0, sp.n_items, (n,), generator=g))

    def latency(self, model: nn.Module, data: CTRData, cfg: Any) -> dict[str, float]:
        """Pairs: one user x ``bench.candidates`` items (+ full catalogue); table: ``bench.candidates`` rows a request."""
        b = cfg.bench
        lc = LatencyConfig(threads=b.threads, warmup=b.warmup, requests=b.requests, candidates=b.candidates,
                           full_catalogue_requests=b.full_catalogue_requests, throughput_batch=b.throughput_batch,
                           throughput_repeats=b.throughput_repeats)
        if data.kind == "pairs":
            return measure_latency(model, data.split.n_users, data.split.n_items, lc)
        t = data.table
        return table_latency(model, t.cat, t.dense, t.test_idx, len(t.labels), lc)


FAMILY = CTRFamily()
