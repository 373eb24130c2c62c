"""Data layer: dataset resolution and downloads, format readers, splits, negative samplers, the ranking DataModule.

``RankingDataModule`` is imported lazily so that ``import recsys.data`` does not pull in Lightning.
"""

from recsys.data.config import DataConfig, parse_data_cfg, validate_data_cfg
from recsys.data.readers import NCFData, read_csv_interactions, read_movielens, read_ncf, read_ncf_test
from recsys.data.sampling import csr_from_pairs, sample_eval_negatives, sample_train_negatives
from recsys.data.sources import (REGISTRY, ChecksumMismatchError, DataNotFoundError, resolve_files,
                                 sha256_files)
from recsys.data.splits import ImplicitSplit, build_split

__all__ = [
    "DataConfig", "parse_data_cfg", "validate_data_cfg", "NCFData", "read_csv_interactions", "read_movielens",
    "read_ncf", "read_ncf_test", "csr_from_pairs", "sample_eval_negatives", "sample_train_negatives", "REGISTRY",
    "ChecksumMismatchError", "DataNotFoundError", "resolve_files", "sha256_files", "ImplicitSplit", "build_split",
    "RankingDataModule",
]


def __getattr__(name: str):
    if name == "RankingDataModule":
        from recsys.data.datamodule import RankingDataModule

        return RankingDataModule
    raise AttributeError(f"module 'recsys.data' has no attribute {name!r}")
