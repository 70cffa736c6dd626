"""Pruning a merged (dense) model in place.

- unstructured: zero the smallest weights of every Linear in the transformer blocks, by magnitude
  (torch.nn.utils.prune, globally or per layer) or by Wanda's |W| x ||input activation|| score per
  output row, from calibration batches of the run's own training data. The zeros stay in dense tensors: a dense CPU matmul does the same work, so this makes the
  model neither faster nor smaller on disk, and the table says so.
- structured: remove feed-forward neurons (same count in every block, ranked by the norm of their
  activation on calibration data times the norm of their outgoing weights) and whole blocks (the
  ones that change the hidden state least on calibration data: 1 - cos(h_in, h_out), averaged over
  real tokens). The result is a smaller dense model with an updated config.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tunelab.compress.structure import blocks, block_list, keep_blocks, keep_neurons, linear_weights
from tunelab.errors import TunelabError


def check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise TunelabError(f"{name} must be in [0, 1) (the fraction removed), not {value}")
    return float(value)


def _forward(model: nn.Module, batches: Iterable[dict], mask_box: list) -> None:
    model.eval()
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            mask_box[:] = [inputs.get("attention_mask")]
            model(**inputs)


def _real(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of a (batch, seq, d) activation that are real tokens (not padding), as (n, d)."""
    if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


# -- unstructured ------------------------------------------------------------------------------------
def magnitude(model: nn.Module, sparsity: float, scope: str = "global") -> None:
    from torch.nn.utils import prune

    targets = [(m, "weight") for _, m in linear_weights(model)]
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    elif scope == "layer":
        for m, name in targets:
            prune.l1_unstructured(m, name, amount=sparsity)
    else:
        raise TunelabError(f"--scope must be global or layer, not '{scope}'")
    for m, name in targets:
        prune.remove(m, name)  # make the zeros permanent: a plain weight tensor again


@torch.no_grad()
def wanda(model: nn.Module, sparsity: float, calibration: list[dict]) -> None:
    """Wanda (Sun et al., 2023): score each weight by |W_ij| x ||x_j||_2 (x_j: input channel j over the
    calibration tokens) and zero the lowest `sparsity` of every output row. Written here rather than
    taken from torchao (0.18 has a WandaSparsifier): torchao ranks within a whole layer instead of per
    row, and importing it, which transformers then does in every process, printed library-load
    failures and added ~0.2 s to each start."""
    layers = linear_weights(model)
    sq = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in layers}
    mask_box: list = [None]

    def hook(name):
        def on_input(_m, args):
            x = _real(args[0], mask_box[0]).double()
            sq[name].add_((x * x).sum(0))
        return on_input

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers]
    try:
        _forward(model, calibration, mask_box)
    finally:
        for h in handles:
            h.remove()
    for name, m in layers:
        score = m.weight.abs().double() * sq[name].sqrt()[None, :]
        k = int(m.in_features * sparsity)
        if k:
            drop = torch.topk(score, k, dim=1, largest=False).indices
            m.weight.scatter_(1, drop, 0.0)


def sparsity_of(model: nn.Module) -> dict:
    """Zeros among the block Linears' weights and among all parameters."""
    lin = [m.weight for _, m in linear_weights(model)]
    zero = sum(int((w == 0).sum()) for w in lin)
    total = sum(w.numel() for w in lin)
    allp = sum(p.numel() for p in model.parameters())
    allz = sum(int((p == 0).sum()) for p in model.parameters())
    return {"block_linear_sparsity": round(zero / total, 4), "overall_sparsity": round(allz / allp, 4),
            "nonzero_params": allp - allz}


# -- structured --------------------------------------------------------------------------------------
def importance(model: nn.Module, calibration: list[dict]) -> tuple[list[torch.Tensor], list[float]]:
    """(per block: each feed-forward neuron's ||activation||_2 over real tokens x ||its outgoing
    weights||_2, per block: mean 1 - cos(h_in, h_out) over real tokens) on the calibration batches."""
    bl = blocks(model)
    sq = [torch.zeros(b.down.in_features, dtype=torch.float64) for b in bl]
    change = [[0.0, 0] for _ in bl]
    mask_box: list = [None]
    handles = []

    def on_down(i):
        def hook(_m, args):
            x = _real(args[0], mask_box[0]).double()
            sq[i].add_((x * x).sum(0))
        return hook

    def on_block(i):
        def hook(_m, args, out):
            h_in = args[0] if args else None
            h_out = out[0] if isinstance(out, tuple) else out
            if not isinstance(h_in, torch.Tensor) or h_in.shape != h_out.shape:
                return
            a, b = _real(h_in, mask_box[0]).double(), _real(h_out, mask_box[0]).double()
            c = nn.functional.cosine_similarity(a, b, dim=-1)
            change[i][0] += float((1 - c).sum())
            change[i][1] += len(c)
        return hook

    try:
        for b in bl:
            handles.append(b.down.register_forward_pre_hook(on_down(b.index)))
            handles.append(b.module.register_forward_hook(on_block(b.index)))
        _forward(model, calibration, mask_box)
    finally:
        for h in handles:
            h.remove()
    scores = [sq[b.index].sqrt() * b.down.weight.detach().double().norm(dim=0) for b in bl]
    influence = [c / n if n else float("nan") for c, n in change]
    return scores, influence


def prune_ffn(model: nn.Module, fraction: float, scores: list[torch.Tensor]) -> int:
    """Remove `fraction` of every block's feed-forward neurons (the lowest scores); returns the new width."""
    bl = blocks(model)
    width = bl[0].down.in_features
    keep_n = max(1, round(width * (1 - fraction)))
    for b, s in zip(bl, scores):
        keep_neurons(b, torch.sort(torch.topk(s, keep_n).indices).values)
    model.config.intermediate_size = keep_n
    return keep_n


def prune_layers(model: nn.Module, fraction: float, influence: list[float] | None = None) -> list[int]:
    """Remove round(fraction x layers) whole blocks: those of least influence, or (influence None)
    evenly spaced ones, keeping the first and every k-th (DistilBERT's initialisation)."""
    n = len(block_list(model)[2])
    drop = min(n - 1, round(n * fraction))
    if influence is None:
        keep = sorted({int(i * n / (n - drop)) for i in range(n - drop)})
    else:
        order = sorted(range(n), key=lambda i: influence[i])  # least change first
        keep = sorted(set(range(n)) - set(order[:drop]))
    keep_blocks(model, keep)
    return keep
