"""Implicit-feedback ranking task (NCF protocol): pointwise BCE on positives + sampled negatives, validation by HR/NDCG
of the held-out item among its sampled negatives. Wraps any model with ``forward(users, items) -> logits``."""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from recsys.data.config import validate_data_cfg
from recsys.data.datamodule import RankingDataModule
from recsys.data.splits import ImplicitSplit, build_split
from recsys.errors import ConfigError
from recsys.evaluation import metrics as M
from recsys.evaluation.protocols import full_ranks, ranking_metrics, sampled_auc, sampled_ranks, sampled_scores
from recsys.measure.latency import LatencyConfig, measure_latency
from recsys.tasks.base import TaskFamily, TrainableTask, model_kwargs
from recsys.tasks.optim import resolve_sparse


class RankingTask(TrainableTask):
    """Trains a ranking model; logs ``<stage>/epoch_train_loss`` and ``<stage>/epoch_val_hr_at_k`` / ``epoch_val_ndcg_at_k`` per epoch."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
                 stage: str = "dense", topk: int = 10, sparse: Any = "false") -> None:
        super().__init__(model, lr, optimizer, weight_decay, stage, sparse=sparse)
        self.topk = topk
        self.loss_fn = nn.BCEWithLogitsLoss()
        # A model's hand-written gradient of this loss (NeuMF.bce_gradients) takes the step where it covers the model
        # and the optimizer takes row gradients (ScatterAdam); False: always autograd (for comparisons)
        self.hand_gradients = True
        self._val_ranks: list[torch.Tensor] = []
        # Manual optimization: the step is zero_grad / backward / step written out below. Lightning's automatic loop
        # (closure, result collection) cost ~1-1.5 ms per step, ~45 % on top of a fused-Adam NeuMF step at batch 256;
        # written out it is ~7 % (experiments/sparse_step_ratio.py --paths fused lightning, interleaved, 1 thread).
        # Callbacks see the same hooks (batch start/end, before/after backward, before optimizer step). Lightning's
        # own gradient clipping / accumulation (trainer.gradient_clip_val, accumulate_grad_batches) do not apply.
        self.automatic_optimization = False

    @property
    def _plain_bce(self) -> bool:
        """``loss_fn`` is still the mean BCE-with-logits a model's ``bce_gradients`` computes."""
        f = self.loss_fn
        return type(f) is nn.BCEWithLogitsLoss and f.reduction == "mean" and f.weight is None and f.pos_weight is None

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model(users, items)

    def train_step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        users, items, labels = batch[:3]
        grads = getattr(self.model, "bce_gradients", None)
        if grads is not None and self.hand_gradients and self._plain_bce:
            opt = self.optimizers()
            if self.takes_rows(opt):
                opt.optimizer.zero_grad()
                got = grads(users, items, labels)   # None where the model is not (or no longer) the plain structure
                if got is not None:
                    return self.rows_step(opt, got[0], got[1], len(users))
        logits = self.model(users, items)
        loss = self.loss_fn(logits, labels)
        return self.manual_step(self.add_extra_losses(loss, batch, logits), len(users))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        users, candidates = batch
        scores = self.model.score(users[:, None].expand_as(candidates).reshape(-1), candidates.reshape(-1))
        scores = scores.view(candidates.shape)
        self._val_ranks.append(M.rank_of_target(scores, scores[:, 0]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_ranks:
            return
        ranks = torch.cat(self._val_ranks)
        self._val_ranks.clear()
        k = self.topk
        self.log(f"{self.stage}/epoch_val_hr_at_{k}", M.hit_rate_at_k(ranks, k), prog_bar=True)
        self.log(f"{self.stage}/epoch_val_ndcg_at_{k}", M.ndcg_at_k(ranks, k), prog_bar=True)


class RankingFamily(TaskFamily):
    """Implicit ranking on an ``ImplicitSplit``: NCF's sampled protocol + full-catalogue ranking, 1 user x candidates."""

    name = "ranking"
    monitor = "val_hr_at_10"

    def check(self, cfg: dict[str, Any]) -> list[str]:
        """The data config's keys and that its files exist (or can be downloaded)."""
        try:
            validate_data_cfg(cfg.get("data", {}), data_dir=cfg.get("paths", {}).get("data_dir"),
                              cache_dir=cfg.get("paths", {}).get("cache_dir"))
        except ConfigError as e:
            return [str(e)]
        return []

    def load_data(self, cfg: Any) -> ImplicitSplit:
        return build_split(OmegaConf.to_container(cfg.data, resolve=True), data_dir=cfg.paths.data_dir,
                           cache_dir=cfg.paths.cache_dir, seed=cfg.seed)

    def data_summary(self, data: ImplicitSplit) -> tuple[dict[str, str], dict[str, float]]:
        tags = {"dataset": data.name, "dataset_checksum": data.checksum, **data.tags()}
        return tags, {"data/n_users": data.n_users, "data/n_items": data.n_items,
                      "data/n_train": len(data.train_users), "data/n_test": len(data.test_users),
                      "data/skipped_lines": data.skipped_lines}

    def model_spec(self, model_cfg: dict[str, Any], data: ImplicitSplit) -> dict[str, Any]:
        return {**model_kwargs(model_cfg), "n_users": data.n_users, "n_items": data.n_items}

    def pretrain(self, model: nn.Module, cfg: Any, data: ImplicitSplit, dense_of: Any
                 ) -> tuple[dict[str, float], dict[str, Any]]:
        """``model.pretrain=true`` (NeuMF): train GMF and MLP with the same settings (each cached through
        ``dense_of``), then initialise NeuMF from them (He et al., Sec. 3.4.1); trained next with the pre-training
        optimizer and learning rate."""
        if not cfg.model.get("pretrain"):
            return {}, {}
        seconds = 0.0
        parts = {}
        for name, target, kw in (("gmf", "recsys.models.ncf.GMF", {"factors": cfg.model.factors}),
                                 ("mlp", "recsys.models.ncf.MLP", {"layers": list(cfg.model.mlp_layers),
                                                                  "dropout": cfg.model.dropout})):
            sub = copy.deepcopy(cfg)
            with open_dict(sub):
                sub.model = OmegaConf.create({"_target_": target, "name": name, "task": cfg.model.task, **kw})
            m, info = dense_of(sub)
            seconds += info.get("train_seconds", 0.0)
            parts[name] = m
            print(f"[pretrain] {name}: ready (train_seconds={info.get('train_seconds', 0):.1f}, "
                  f"cache_hit={info.get('cache_hit')})")
        model.load_pretrained(parts["gmf"], parts["mlp"], alpha=float(cfg.model.get("pretrain_alpha", 0.5)))
        train_kw = {"optimizer": cfg.model.get("pretrain_optimizer", "sgd"),
                    "lr": cfg.model.get("pretrain_lr", cfg.train.lr)}
        return {"pretrain_seconds": seconds}, train_kw

    def make_task(self, model: nn.Module, cfg: Any, stage: str, lr: float, optimizer: str) -> RankingTask:
        sparse = self._sparse_setting(cfg, data_rows=model, optimizer=optimizer)
        return RankingTask(model, lr=lr, optimizer=optimizer, weight_decay=cfg.train.weight_decay, stage=stage,
                           topk=int(cfg.eval.topk[0]), sparse=sparse)

    @staticmethod
    def _sparse_setting(cfg: Any, data_rows: nn.Module, optimizer: str | None = None) -> Any:
        """``train.sparse``, with ``auto`` resolved by how many table rows a batch touches. Where it touches few (<=
        10 %): ``auto`` (row-wise Adam / sparse SGD). Where one batch hits a large share of the rows (ML-1M at batch
        2048: ~40 %) the row kernels' random-row gathers and writes cost as much as the fused dense pass over the
        whole table (two alternations, ML-1M b2048: 12.1 vs 11.7 s and 13.8 vs 13.8 s an epoch), so Adam stays dense
        over every row, with the tables' gradients scattered into kept buffers (``scatter``: the same steps, no
        table-sized gradient allocated and zero-filled each step); other optimizers then train dense (``false``).
        ``optimizer``: the stage's optimizer (default ``train.optimizer``)."""
        setting = cfg.train.get("sparse", "false")
        if str(setting).lower() != "auto":
            return setting
        rows = sum(m.num_embeddings for m in data_rows.modules() if type(m) is nn.Embedding) or 1
        tables = sum(1 for m in data_rows.modules() if type(m) is nn.Embedding) or 1
        if cfg.train.batch_size * tables <= 0.10 * rows:
            return "auto"
        opt = optimizer or cfg.train.get("optimizer", "adam")
        return "scatter" if resolve_sparse("auto", opt, cfg.train.get("weight_decay", 0.0), data_rows) == "rowwise" \
            else "false"

    def make_datamodule(self, data: ImplicitSplit, cfg: Any, data_fraction: float = 1.0) -> RankingDataModule:
        return RankingDataModule(data, batch_size=cfg.train.batch_size, num_negatives=cfg.train.num_negatives,
                                 seed=cfg.seed, eval_batch_users=cfg.eval.batch_users, data_fraction=data_fraction)

    def samples_per_epoch(self, data: ImplicitSplit, cfg: Any, data_fraction: float = 1.0) -> float:
        return len(data.train_users) * data_fraction * (1 + cfg.train.num_negatives)

    def evaluate(self, model: nn.Module, data: ImplicitSplit, cfg: Any) -> dict[str, float]:
        """Sampled-protocol HR/NDCG/MRR on test and validation; full-ranking recall/NDCG on test (known items masked)."""
        model.eval()
        ks = tuple(int(k) for k in cfg.eval.topk)
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        scores = sampled_scores(model, data.test_users, data.test_candidates(), batch_users=cfg.eval.batch_users)
        out.update(ranking_metrics(M.rank_of_target(scores, scores[:, 0]), ks))
        out["auc"] = sampled_auc(scores)
        out["eval_seconds"] = time.perf_counter() - t0
        ranks = sampled_ranks(model, data.val_users, data.val_candidates(), batch_users=cfg.eval.batch_users)
        out.update({f"val_{k}": v for k, v in ranking_metrics(ranks, ks).items() if not k.startswith("mrr")})
        if cfg.eval.full_ranking:
            t0 = time.perf_counter()
            indptr, indices = data.known_csr()
            ranks = full_ranks(model, data.test_users, data.test_items, data.n_items, indptr, indices,
                               batch_users=cfg.eval.batch_users)
            out["full_eval_seconds"] = time.perf_counter() - t0
            for k in ks:
                full = ranking_metrics(ranks, (k,))
                out[f"recall_at_{k}"] = full[f"hr_at_{k}"]
                out[f"full_ndcg_at_{k}"] = full[f"ndcg_at_{k}"]
        return out

    def example_inputs(self, data: ImplicitSplit, n: int = 4096) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, data.n_users, (n,), generator=g), torch.randint(0, data.n_items, (n,), generator=g))

    def latency(self, model: nn.Module, data: ImplicitSplit, cfg: Any) -> dict[str, float]:
        b = cfg.bench
        return measure_latency(model, data.n_users, data.n_items, LatencyConfig(
            threads=b.threads, warmup=b.warmup, requests=b.requests, candidates=b.candidates,
            full_catalogue_requests=b.full_catalogue_requests, throughput_batch=b.throughput_batch,
            throughput_repeats=b.throughput_repeats))


FAMILY = RankingFamily()
