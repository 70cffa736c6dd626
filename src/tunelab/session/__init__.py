"""The Python API: `Session` (the one training pipeline for every task and method) and `Predictor`
(inference on a finished run or a model folder)."""

from tunelab.session.predictor import Predictor
from tunelab.session.session import Session

__all__ = ["Predictor", "Session"]
