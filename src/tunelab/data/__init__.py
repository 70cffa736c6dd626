"""Data: packaged datasets and user files -> a fixed, seeded, stratified train/validation/test split."""

from tunelab.data.splits import Splits, load_splits

__all__ = ["Splits", "load_splits"]
