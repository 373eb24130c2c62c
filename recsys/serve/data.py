"""What travels with a served model besides its weights: the id maps (original id <-> index) and each user's training
items as CSR arrays, in one ``.npz`` read with ``allow_pickle=False`` (string ids are stored as fixed-width unicode)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.fileio import atomic_path


def _plain(ids: np.ndarray) -> np.ndarray:
    """Integer ids stay int64; anything else becomes fixed-width unicode (never an object array, which would pickle)."""
    ids = np.asarray(ids)
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)


class _Index:
    """Original id -> row, by binary search over the sorted ids (ints compare as ints, anything else as strings)."""

    def __init__(self, ids: np.ndarray, what: str) -> None:
        self.what, self.numeric = what, ids.dtype.kind in "iu"
        ids = ids if self.numeric else ids.astype(str)
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def _unknown(self, v: Any) -> KeyError:
        return KeyError(f"{self.what} {v!r} is not in the model's training data")

    def _as_keys(self, ids: list) -> np.ndarray:
        arr = np.asarray(ids)
        if not self.numeric:
            return arr.astype(str)
        if arr.dtype.kind in "iu":
            return arr.astype(np.int64)
        if arr.dtype.kind == "f":   # integral floats (a JSON 5.0) are ids; anything else names itself
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if not bad.any():
                return arr.astype(np.int64)
            raise self._unknown(ids[int(np.flatnonzero(bad)[0])])
        for v in ids:               # strings, bools or a mix: the first value that is not an integer id
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise self._unknown(v)
        return arr.astype(np.int64)

    def lookup(self, ids: list) -> np.ndarray:
        """Rows of ``ids``; KeyError naming the first unknown one."""
        if not ids:
            return np.zeros(0, dtype=np.int64)
        arr = self._as_keys(ids)
        if not len(self.sorted):
            raise self._unknown(ids[0])
        pos = np.minimum(np.searchsorted(self.sorted, arr), len(self.sorted) - 1)
        ok = self.sorted[pos] == arr
        if not ok.all():
            raise self._unknown(ids[int(np.flatnonzero(~ok)[0])])
        return self.order[pos].astype(np.int64)


@dataclass
class ServeData:
    """Id maps and seen items of one served model; ``user_ids`` is empty for session models (no users)."""

    item_ids: np.ndarray
    user_ids: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray

    def __post_init__(self) -> None:
        # sorted copies for vectorised lookups (np.searchsorted over the whole request, no per-id Python loop)
        self._items = _Index(self.item_ids, "item_id")
        self._users = _Index(self.user_ids, "user_id")

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self, user_id: Any) -> int:
        """Index of an original user id (KeyError naming it when unknown)."""
        return int(self._users.lookup([user_id])[0])

    def user_indices(self, user_ids: Any) -> np.ndarray:
        """Indices of original user ids (KeyError naming the first unknown one)."""
        return self._users.lookup(list(user_ids))

    def item_index(self, item_ids: Any) -> np.ndarray:
        """Indices of original item ids (KeyError naming the first unknown one)."""
        return self._items.lookup(list(item_ids))

    def seen(self, user: int) -> np.ndarray:
        """Item indices the user trained on (excluded from its recommendations)."""
        return self.seen_indices[self.seen_indptr[user]:self.seen_indptr[user + 1]]

    def save(self, path: str | Path) -> Path:
        """Atomic write (temp file + rename) of the four arrays."""
        path = Path(path)
        with atomic_path(path) as tmp:
            np.savez(tmp, item_ids=_plain(self.item_ids), user_ids=_plain(self.user_ids),
                     seen_indptr=self.seen_indptr.astype(np.int64), seen_indices=self.seen_indices.astype(np.int64))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ServeData:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["item_ids"], z["user_ids"], z["seen_indptr"], z["seen_indices"])


def serve_data(family_name: str, data: Any) -> ServeData:
    """The id maps of a family's data object; raises ValueError for data that has no (user, item) contract."""
    if family_name == "session":
        return ServeData(_plain(data.item_ids), np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64),
                         np.zeros(0, dtype=np.int64))
    split = data if family_name == "ranking" else getattr(data, "split", None)
    if split is None:
        raise ValueError("a CTR model trained on a feature table (e.g. Criteo) has no users or items to recommend: "
                         "serving it needs raw feature rows, which this contract does not take")
    indptr, indices = split.train_csr()
    return ServeData(_plain(split.item_ids), _plain(split.user_ids), np.asarray(indptr), np.asarray(indices))
