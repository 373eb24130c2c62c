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


@dataclass
class ServeData:
    """Id maps and seen items of one served model; ``user_ids`` is empty for session models (no users)."""

    item_ids: np.ndarray
    user_ids: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray

    def __post_init__(self) -> None:
        self._item_index = {self._key(v): i for i, v in enumerate(self.item_ids.tolist())}
        self._user_index = {self._key(v): i for i, v in enumerate(self.user_ids.tolist())}

    @staticmethod
    def _key(v: Any) -> Any:
        return str(v) if not isinstance(v, (int, np.integer)) else int(v)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def _lookup(self, index: dict, ids: Any, what: str, dtype_kind: str) -> np.ndarray:
        out = []
        for v in ids:
            key = int(v) if dtype_kind in "iu" and isinstance(v, (int, float, np.integer, np.floating)) and \
                float(v).is_integer() else (str(v) if dtype_kind not in "iu" else v)
            if key not in index:
                raise KeyError(f"{what} {v!r} is not in the model's training data")
            out.append(index[key])
        return np.asarray(out, dtype=np.int64)

    def user_index(self, user_id: Any) -> int:
        """Index of an original user id (KeyError naming it when unknown)."""
        return int(self._lookup(self._user_index, [user_id], "user_id", self.user_ids.dtype.kind)[0])

    def item_index(self, item_ids: Any) -> np.ndarray:
        """Indices of original item ids (KeyError naming the first unknown one)."""
        return self._lookup(self._item_index, list(item_ids), "item_id", self.item_ids.dtype.kind)

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
