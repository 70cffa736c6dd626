"""ONNX export of a sequence classifier (inputs input_ids + attention_mask, output logits, dynamic
batch and sequence axes) via torch.onnx's exporter, then checked with onnxruntime against the PyTorch
logits on real tokenized texts of different lengths (so padding is exercised)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tunelab.errors import TunelabError

FILE = "model.onnx"
TOLERANCE = 1e-3  # max abs logit difference accepted between onnxruntime and PyTorch (fp32)


class _Logits(nn.Module):
    """The classifier as a function of (input_ids, attention_mask) -> logits, the graph's signature."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: nn.Module, tokenizer, texts: list[str], out_dir: Path) -> dict:
    """Write out_dir/model.onnx; return {"file", "max_abs_diff", "tolerance", "opset"} or raise if
    onnxruntime disagrees with PyTorch beyond TOLERANCE."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise TunelabError(f"--onnx needs onnx, onnxscript and onnxruntime ({e}); "
                           "pip install onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0") from None
    model = model.float().eval()
    wrapped = _Logits(model)
    sample = tokenizer(texts[:2], padding=True, return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = Path(out_dir) / FILE
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapped, (sample["input_ids"], sample["attention_mask"]), input_names=["input_ids", "attention_mask"],
            output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            dynamo=True, external_data=False, verbose=False)
    program.save(str(path))
    diff = onnx_vs_torch(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), wrapped, tokenizer, texts)
    if diff > TOLERANCE:
        raise TunelabError(f"the ONNX graph's logits differ from PyTorch's by {diff:.2e} (> {TOLERANCE}); "
                           "the export is not written")
    return {"file": FILE, "max_abs_diff": diff, "tolerance": TOLERANCE, "opset": getattr(program.model, "opset_imports", {}).get("")}


def onnx_vs_torch(session, wrapped: nn.Module, tokenizer, texts: list[str]) -> float:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = wrapped(enc["input_ids"], enc["attention_mask"]).numpy()
    got = session.run(["logits"], {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})[0]
    return float(np.abs(got - ref).max())
