"""Session data for next-item models (GRU4Rec): session click logs, MovieLens sequences by timestamp, and the
session-parallel mini-batch iterator of Hidasi et al. (2016).

Data config (``conf/data/*.yaml``) for ``format: sessions`` — unknown keys are rejected:

================ =====================================================================================================
``name``         str, required.
``format``       ``sessions``: click logs (CSV / TSV / Parquet), e.g. the GRU4Rec/session-rec YooChoose files, or a
                 user's own (``data=sessions_csv``).
``source``       folder under the data root.
``train_file``   clicks (all of them when there is no test file); ``test_file``: optional test clicks; without it the
                 split is temporal: sessions that END in the last ``test_days`` days (when set), else the last
                 ``test_fraction`` of sessions by end time, are the test set. ``val_file``: optional validation clicks
                 (without it, the last ``val_fraction`` of training sessions by start time are held out for validation).
``session_col``  / ``item_col`` / ``time_col``: column names (defaults SessionId / ItemId / Time).
``time_format``  null (times are numbers) or how date strings are written: ``%Y-%m-%d``, ``%Y-%m-%dT%H:%M:%S``, ...
                 or ``iso8601``.
``sep``          field separator (default tab; names ``tab``, ``comma``, ``semicolon``, ``space``, ``pipe`` work);
                 ``header``: whether the files have a header row (default true).
``val_fraction`` float in (0, 1), default 0.05 (only used without ``val_file``); ``test_fraction`` default 0.1.
``bad_lines``    ``error`` (default) or ``skip`` (malformed lines dropped and counted: ``data/skipped_lines``).
================ =====================================================================================================

Rules (as the official GRU4Rec evaluation): clicks are ordered by (session, time); test/validation clicks on items never
seen in training are dropped, then sessions shorter than 2 clicks are dropped. Every click after a session's first is a
prediction target.

MovieLens ``movielens`` / ``csv`` (with ``time_col``) data become one sequence per user ordered by (timestamp, item):
the last item is the test target, the one before it the validation target (users with >= 3 ratings), the rest trains.
Data without an order (``csv`` without ``time_col``, ``ncf``) cannot feed a sequence model: :func:`order_problem` says so.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset

from recsys.data.config import parse_data_cfg
from recsys.data.readers import read_csv_interactions, read_movielens
from recsys.data.sampling import sorted_unique
from recsys.data.shard import rank_batch, rank_world, shard
from recsys.data.sources import resolve_files, sha256_files
from recsys.data.validate import check_bad_lines, normalize_sep, read_table
from recsys.errors import ConfigError

SESSION_KEYS = {"name": None, "format": None, "source": None, "train_file": None, "test_file": None, "val_file": None,
                "session_col": "SessionId", "item_col": "ItemId", "time_col": "Time", "sep": "\t", "header": True,
                "val_fraction": 0.05, "test_days": None, "test_fraction": 0.1, "time_format": None,
                "bad_lines": "error"}
INFO_KEYS = frozenset({"description", "family", "task"})


@dataclass(eq=False)
class Sessions:
    """Sequences in CSR form: session s is ``items[offsets[s]:offsets[s+1]]``; ``targets`` marks clicks to predict."""

    offsets: np.ndarray
    items: np.ndarray
    targets: np.ndarray   # bool per click: predict this click from the clicks before it in its session
    start: np.ndarray | None = None   # first timestamp of each session (for ``session_order: time``)

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def n_targets(self) -> int:
        return int(self.targets.sum())


@dataclass(eq=False)
class SessionData:
    """Train / validation / test sequences over item indices 0..n_items-1 (``item_ids`` maps back to raw ids)."""

    name: str
    checksum: str
    n_items: int
    item_ids: np.ndarray
    train: Sessions
    val: Sessions
    test: Sessions
    dropped_test_events: int = 0
    split_rule: str = ""
    skipped_lines: int = 0

    def item_counts(self) -> np.ndarray:
        """Training click count of each item (popularity, for negative sampling)."""
        return np.bincount(self.train.items, minlength=self.n_items)


def _sessions_from_frame(sess: np.ndarray, items: np.ndarray, times: np.ndarray, min_len: int = 2,
                         target_rule: str = "all", tiebreak: np.ndarray | None = None) -> Sessions:
    """CSR sessions from parallel columns sorted by (session, time, tiebreak = row order by default); drops sessions
    shorter than ``min_len``."""
    order = np.lexsort((np.arange(len(sess)) if tiebreak is None else tiebreak, times, sess))
    sess, items = sess[order], items[order]
    starts = np.flatnonzero(np.r_[True, sess[1:] != sess[:-1]]) if len(sess) else np.zeros(0, dtype=np.int64)
    lengths = np.diff(np.r_[starts, len(sess)])
    keep = lengths >= min_len
    idx = np.concatenate([np.arange(s, s + n) for s, n in zip(starts[keep], lengths[keep])]) if keep.any() else \
        np.zeros(0, dtype=np.int64)
    lengths = lengths[keep]
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    targets = np.ones(len(idx), dtype=bool)
    targets[offsets[:-1]] = False          # a session's first click has nothing before it
    if target_rule == "last":              # only the last click of each sequence is predicted
        targets[:] = False
        targets[offsets[1:] - 1] = True
    start = np.asarray(times, dtype=np.float64)[order][starts[keep]] if len(sess) else np.zeros(0)
    return Sessions(offsets, items[idx].astype(np.int64), targets, start)


def parse_session_cfg(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check keys and values of a ``format: sessions`` data config (no I/O); defaults filled in."""
    raw = dict(data_cfg)
    unknown = sorted(k for k in raw if k not in SESSION_KEYS and k not in INFO_KEYS)
    if unknown:
        raise ConfigError(f"data config (format sessions): unknown key(s) {unknown}; allowed keys: "
                          f"{sorted(SESSION_KEYS)}.")
    cfg = {k: (raw[k] if raw.get(k) is not None else v) for k, v in SESSION_KEYS.items()}
    for key in ("name", "source", "train_file"):
        if not cfg[key]:
            raise ConfigError(f"data config (format sessions): missing required key 'data.{key}'.")
    for key in ("val_fraction", "test_fraction"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
            raise ConfigError(f"data.{key}={v!r}: must be a number in (0, 1).")
    td = cfg["test_days"]
    if td is not None and (isinstance(td, bool) or not isinstance(td, (int, float)) or td <= 0):
        raise ConfigError(f"data.test_days={td!r}: must be a positive number of days (or null).")
    cfg["sep"] = normalize_sep(raw.get("sep", cfg["sep"]))
    check_bad_lines(cfg["bad_lines"])
    return cfg


def order_problem(data_cfg: Mapping[str, Any], model_name: str) -> str | None:
    """Why ``model_name`` cannot read ``data_cfg`` as ordered sequences, or None when it can."""
    fmt, name = data_cfg.get("format"), data_cfg.get("name")
    if fmt == "sessions" or fmt == "movielens" or (fmt == "csv" and data_cfg.get("time_col") is not None):
        return None
    why = "it has no time column (data.time_col is null)" if fmt == "csv" else f"format {fmt!r} carries no click order"
    return (f"model={model_name} needs ordered interactions (session logs or timestamps), but data={name} has no "
            f"order: {why}. Use data=yoochoose, data=ml-100k or data=ml-1m-half, or a csv with data.time_col set.")


def _read_log(path: Any, cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, int]:
    """(session, item, time) of a click log, validated; and the number of malformed lines skipped."""
    t = read_table(path, sep=cfg["sep"], header=cfg["header"], bad_lines=cfg["bad_lines"])
    df = t.columns({"session": (cfg["session_col"], "data.session_col", "id"),
                    "item": (cfg["item_col"], "data.item_col", "id"),
                    "time": (cfg["time_col"], "data.time_col", "time")}, time_format=cfg["time_format"])
    if df["item"].dtype.kind not in "iu":   # string item ids are compared as strings across files
        df["item"] = df["item"].astype(str).to_numpy(dtype=object)
    df["session"] = pd.factorize(df["session"])[0].astype(np.int64)   # sessions never span files: codes suffice
    return df, t.skipped


def temporal_split(df: pd.DataFrame, test_days: float | None, test_fraction: float) -> tuple[np.ndarray, str]:
    """Mask of test clicks: sessions ending in the last ``test_days`` days, else the last ``test_fraction`` of sessions
    by end time (ties by session id); and the rule in words."""
    end = df.groupby("session")["time"].max()
    if test_days is not None:
        test_sessions = end.index[end.to_numpy() > end.max() - 86400.0 * float(test_days)]
        rule = f"temporal: test = sessions ending in the last {test_days:g} day(s)"
    else:
        order = end.sort_values(kind="stable")
        test_sessions = order.index[int(len(order) * (1 - test_fraction)):]
        rule = f"temporal: test = the last {test_fraction:g} of sessions by end time"
    return df["session"].isin(test_sessions).to_numpy(), rule


def _encode(df: pd.DataFrame, item_ids: np.ndarray) -> tuple[pd.DataFrame, int]:
    """Map raw item ids to indices; drop clicks on items unknown to training. Returns (frame, dropped count)."""
    pos = np.searchsorted(item_ids, df["item"].to_numpy())
    pos = np.clip(pos, 0, len(item_ids) - 1)
    known = item_ids[pos] == df["item"].to_numpy()
    out = df[known].copy()
    out["item"] = pos[known]
    return out, int((~known).sum())


def load_session_log(cfg: Mapping[str, Any], data_dir: Any, cache_dir: Any) -> SessionData:
    """Train/val/test sessions from click logs (``format: sessions``): test from ``test_file`` or a temporal split;
    test / validation clicks on items unseen in training are dropped, then sessions shorter than 2."""
    required = [f for f in (cfg["train_file"], cfg["test_file"], cfg["val_file"]) if f]
    folder = resolve_files(cfg["source"], data_dir, cache_dir, required)
    train, skipped = _read_log(folder / cfg["train_file"], cfg)
    if cfg["test_file"]:
        test, n = _read_log(folder / cfg["test_file"], cfg)
        skipped += n
        rule = f"test = {cfg['test_file']}"
    else:
        is_test, rule = temporal_split(train, cfg["test_days"], float(cfg["test_fraction"]))
        train, test = train[~is_test], train[is_test]
    if cfg["val_file"]:
        val, n = _read_log(folder / cfg["val_file"], cfg)
        skipped += n
        rule += f"; validation = {cfg['val_file']}"
    else:  # hold out the sessions that start last
        start = train.groupby("session")["time"].min().sort_values(kind="stable")
        held = set(start.index[int(len(start) * (1 - cfg["val_fraction"])):])
        is_val = train["session"].isin(held).to_numpy()
        train, val = train[~is_val], train[is_val]
        rule += f"; validation = the last {cfg['val_fraction']:g} of training sessions by start time"
    item_ids = sorted_unique(train["item"].to_numpy())
    tr, _ = _encode(train, item_ids)
    va, _ = _encode(val, item_ids)
    te, dropped = _encode(test, item_ids)
    mk = lambda d: _sessions_from_frame(d["session"].to_numpy(), d["item"].to_numpy(), d["time"].to_numpy())  # noqa: E731
    data = SessionData(cfg["name"], sha256_files(folder / f for f in required), len(item_ids), item_ids, mk(tr),
                       mk(va), mk(te), dropped, rule + "; test clicks on items unseen in training dropped",
                       skipped)
    for part, s in (("training", data.train), ("validation", data.val), ("test", data.test)):
        if s.n_targets == 0:
            raise ConfigError(f"data={cfg['name']} ({folder}): no {part} session with 2 or more clicks is left after "
                              f"the split ({rule}) and dropping items unseen in training; more data, or a different "
                              "data.test_fraction / data.test_days / data.val_fraction, is needed.")
    return data


def load_user_sequences(data_cfg: Mapping[str, Any], data_dir: Any, cache_dir: Any) -> SessionData:
    """One sequence per user ordered by (timestamp, item): last item = test target, the one before = validation."""
    cfg = parse_data_cfg(data_cfg)
    folder = resolve_files(cfg.source, data_dir, cache_dir, cfg.required_files())
    if cfg.format == "movielens":
        df = read_movielens(cfg.source, folder, bad_lines=cfg.bad_lines)
    else:
        df = read_csv_interactions(folder / cfg.train_file, cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col,
                                   cfg.sep, cfg.header, time_format=cfg.time_format, bad_lines=cfg.bad_lines)
    skipped = int(df.attrs.get("skipped_lines", 0))
    if cfg.min_rating is not None:
        df = df[df["rating"] >= cfg.min_rating]
    item_ids = sorted_unique(df["item"].to_numpy())
    users, items = df["user"].to_numpy(), np.searchsorted(item_ids, df["item"].to_numpy())
    t = df["timestamp"].to_numpy().astype(np.float64)
    full = _sessions_from_frame(users, items, t, min_len=3, target_rule="last", tiebreak=items)
    lengths = np.diff(full.offsets)
    cut = lambda k: np.concatenate([full.items[s:e - k] for s, e in zip(full.offsets[:-1], full.offsets[1:])])  # noqa
    off = lambda k: np.r_[0, np.cumsum(lengths - k)].astype(np.int64)  # noqa: E731
    train = Sessions(off(2), cut(2), np.ones(int((lengths - 2).sum()), dtype=bool), full.start)
    train.targets[train.offsets[:-1]] = False
    val_off = off(1)
    val_t = np.zeros(val_off[-1], dtype=bool)
    val_t[val_off[1:] - 1] = True
    val = Sessions(val_off, cut(1), val_t)
    checksum = sha256_files([p for p in folder.iterdir() if p.is_file() and p.name.split(".")[0] in
                             ("u", "ratings", str(cfg.train_file).split(".")[0])])
    return SessionData(cfg.name, checksum, len(item_ids), item_ids, train, val, full,
                       split_rule="per user by time: test = last item, validation = the one before",
                       skipped_lines=skipped)


def load_session_data(data_cfg: Mapping[str, Any], data_dir: Any, cache_dir: Any) -> SessionData:
    """Sessions for any ordered data config (``sessions``, ``movielens``, ``csv`` with ``time_col``)."""
    if data_cfg.get("format") == "sessions":
        return load_session_log(parse_session_cfg(data_cfg), data_dir, cache_dir)
    problem = order_problem(data_cfg, "gru4rec")
    if problem:
        raise ConfigError(problem)
    return load_user_sequences(data_cfg, data_dir, cache_dir)


ORDERS, EPOCH_ENDS = ("id", "time"), ("stop", "drain")
SAMPLE_STORE = 10_000_000   # negatives drawn per vectorised batch of draws (as the official implementation's store)
BLOCK_STEPS = 4096          # ... but at most this many steps' worth: with a small n_sample (64) a full store was
                            # 156k steps per block, far more than an epoch uses (the draws are the same stream either way)


class SessionParallelBatches(IterableDataset):
    """Session-parallel mini-batches (Hidasi et al. 2016, Sec. 3.1.1): ``batch_size`` sessions side by side.

    Each step yields ``(inputs, targets, reset, negatives)``: the current click of every slot, the click after it, a bool
    mask of slots whose hidden state must be zeroed *before* this step (a new session started there), and ``n_sample``
    extra negatives drawn with probability proportional to popularity^``sample_alpha``. When a slot's session has no
    next click, the next unused session takes the slot. Sessions come in ``order`` ``id`` (the CSR order) or ``time``
    (by first click, as the official implementation). ``epoch_end``: ``stop`` ends the epoch when a finished slot cannot
    be refilled; ``drain`` drops such slots and goes on with a shrinking batch until every click is used (official);
    then each step has a fifth element ``keep``: the rows of the previous step's state that continue here. Each
    ``__iter__`` is one epoch; ``data_fraction`` < 1 uses a random subset of sessions (drawn from (seed, epoch)), kept
    in their order.
    """

    def __init__(self, sessions: Sessions, batch_size: int, n_items: int, n_sample: int = 0, sample_alpha: float = 0.75,
                 seed: int = 0, data_fraction: float = 1.0, item_counts: np.ndarray | None = None,
                 order: str = "id", epoch_end: str = "stop") -> None:
        if batch_size < 1:
            raise ConfigError(f"model.batch_size={batch_size!r}: must be a positive integer (sessions per batch).")
        if not 0.0 < data_fraction <= 1.0:
            raise ConfigError(f"data_fraction must be in (0, 1], got {data_fraction} (finetune.data_fraction).")
        if order not in ORDERS:
            raise ConfigError(f"model.session_order={order!r}: must be one of {list(ORDERS)}.")
        if epoch_end not in EPOCH_ENDS:
            raise ConfigError(f"model.epoch_end={epoch_end!r}: must be one of {list(EPOCH_ENDS)}.")
        if order == "time" and sessions.start is None:
            raise ConfigError("model.session_order='time': these sessions carry no timestamps; use 'id'.")
        self.s, self.n_items, self.n_sample = sessions, n_items, int(n_sample)
        self.seed, self.data_fraction, self.epoch = int(seed), float(data_fraction), 0
        self.order, self.epoch_end = order, epoch_end
        lengths = np.diff(sessions.offsets)
        self.usable = np.flatnonzero(lengths >= 2)
        if order == "time":
            self.usable = self.usable[np.argsort(sessions.start[self.usable], kind="stable")]
        self.batch_size = int(min(batch_size, max(1, len(self.usable))))
        counts = item_counts if item_counts is not None else np.bincount(sessions.items, minlength=n_items)
        p = counts.astype(np.float64) ** sample_alpha
        self.cdf = np.cumsum(p / p.sum())
        self._plans: dict[tuple[int, int, int], tuple] = {}   # the last epoch plan (``steps``)
        self._guide: torch.Tensor | None = None              # the cdf as a tensor, for ``_search``

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sessions_for(self, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Indices of the sessions used in ``epoch`` (rank ``rank``'s strided share under DDP), in order."""
        if self.data_fraction >= 1.0:
            order = self.usable
        else:
            rng = np.random.default_rng([self.seed, epoch, 7])
            k = max(self.batch_size, int(round(self.data_fraction * len(self.usable))))
            pick = np.sort(rng.choice(len(self.usable), size=min(k, len(self.usable)), replace=False))
            order = self.usable[pick]   # positions sorted: the configured session order is kept
        return order[shard(len(order), rank, world)] if world > 1 else order

    def plan(self, epoch: int, rank: int = 0, world: int = 1
             ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(click positions, reset mask, rows of the previous step kept or None when all) of every step of ``epoch``;
        under DDP, of this rank's sessions, ``batch_size / world`` side by side."""
        order = self.sessions_for(epoch, rank, world)
        off = self.s.offsets
        b = min(rank_batch(self.batch_size, world), len(order))
        cur, end = off[order[:b]].copy(), off[order[:b] + 1].copy()
        nxt, reset, keep = b, np.ones(b, dtype=bool), None
        while True:
            yield cur.copy(), reset.copy(), keep
            cur += 1
            done = np.flatnonzero(cur + 1 >= end)
            left = len(order) - nxt
            if len(done) > left and self.epoch_end == "stop":
                return
            reset[:] = False
            fill, drop = done[:left], done[left:]
            new = order[nxt:nxt + len(fill)]
            cur[fill], end[fill], reset[fill] = off[new], off[new + 1], True
            nxt += len(fill)
            keep = None
            if len(drop):
                keep = np.setdiff1d(np.arange(len(cur)), drop)
                if not len(keep):
                    return
                cur, end, reset = cur[keep], end[keep], reset[keep]

    def steps(self, epoch: int, rank: int = 0, world: int = 1
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        """``plan`` as flat arrays, computed once and kept (the plan depends on the epoch only through
        ``data_fraction`` < 1): (click positions of all steps, step boundaries into them, reset masks, {step: keep})."""
        key = (epoch if self.data_fraction < 1.0 else 0, rank, world)
        if key not in self._plans:
            pos, reset, keeps, bounds = [], [], {}, [0]
            for i, (p, r, k) in enumerate(self.plan(epoch, rank, world)):
                pos.append(p)
                reset.append(r)
                bounds.append(bounds[-1] + len(p))
                if k is not None:
                    keeps[i] = k
            self._plans = {key: (np.concatenate(pos), np.asarray(bounds), np.concatenate(reset), keeps)}
        return self._plans[key]

    def n_steps(self, epoch: int = 0) -> int:
        """Steps in ``epoch``."""
        return len(self.steps(epoch)[1]) - 1

    def n_events(self, epoch: int = 0) -> int:
        """Training events (clicks with a next click) of ``epoch``: the sum of the steps' sizes."""
        return len(self.steps(epoch)[0])

    def _negatives(self, rng: np.random.Generator, steps: int) -> Iterator[torch.Tensor]:
        """``n_sample`` popularity^alpha negatives per step, drawn in vectorised blocks (same stream as per step), no
        more than the epoch's ``steps`` use (a block of 4,096 steps was 2.5x what a 1,650-step epoch needs)."""
        per_block = max(1, min(BLOCK_STEPS, SAMPLE_STORE // max(1, self.n_sample), steps))
        while True:
            draws = self._search(rng.random(per_block * self.n_sample)).clamp_(max=self.n_items - 1)
            block = draws.view(per_block, self.n_sample)
            for row in range(per_block):   # one view at a time (iterating the tensor built all of them up front)
                yield block[row]

    def _search(self, u: np.ndarray) -> torch.Tensor:
        """``np.searchsorted(self.cdf, u)`` (the same int64 answers) through ``torch.searchsorted``: ~1.4x faster on
        one thread and it uses torch's threads; the search was ~0.5 ms per step at n_sample=2048."""
        if self._guide is None:
            self._guide = torch.from_numpy(self.cdf)
        return torch.searchsorted(self._guide, torch.from_numpy(u))

    def rank_steps(self, epoch: int, world: int) -> int:
        """Steps every rank runs in ``epoch``: the fewest of any rank's share (all of them with one process)."""
        if world == 1:
            return self.n_steps(epoch)
        return min(sum(1 for _ in self.plan(epoch, r, world)) for r in range(world))

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        rank, world = rank_world()
        rng = np.random.default_rng([self.seed, epoch] + ([1 + rank] if world > 1 else []))
        pos, bounds, reset, keeps = self.steps(epoch, rank, world)
        items = torch.from_numpy(self.s.items)
        p = torch.from_numpy(pos)
        # every step's tensors are views of three epoch-long ones, built once (no per-step numpy)
        inputs, targets, resets = items[p], items[p + 1], torch.from_numpy(reset)
        steps = self.rank_steps(epoch, world) if world > 1 else len(bounds) - 1
        negatives = self._negatives(rng, steps) if self.n_sample else None
        empty = torch.zeros(0, dtype=torch.long)
        for i in range(steps):   # under DDP every rank stops at the shortest rank's step count (equal steps)
            a, b = int(bounds[i]), int(bounds[i + 1])
            neg = next(negatives) if negatives is not None else empty
            step = (inputs[a:b], targets[a:b], resets[a:b], neg)
            if self.epoch_end == "drain":
                keep = keeps.get(i)
                step += (torch.from_numpy(keep) if keep is not None else empty,)
            yield step


def padded(sessions: Sessions, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items (b, L) right-padded with 0, lengths (b,), targets mask (b, L)) of the given sessions."""
    off = sessions.offsets
    lengths = off[rows + 1] - off[rows]
    L = int(lengths.max()) if len(rows) else 0
    seq = np.zeros((len(rows), L), dtype=np.int64)
    tgt = np.zeros((len(rows), L), dtype=bool)
    for r, s in enumerate(rows):
        seq[r, :lengths[r]] = sessions.items[off[s]:off[s + 1]]
        tgt[r, :lengths[r]] = sessions.targets[off[s]:off[s + 1]]
    return torch.from_numpy(seq), torch.from_numpy(lengths.astype(np.int64)), torch.from_numpy(tgt)


__all__ = ["Sessions", "SessionData", "SessionParallelBatches", "load_session_data", "order_problem",
           "parse_session_cfg", "padded"]
