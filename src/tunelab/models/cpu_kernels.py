"""Two CPU hot spots that torch 2.13 handles slowly, replaced with the same maths (profiled in bench/):

- Dropout: `bernoulli_` draws one random number per element serially (~46 ns each here); on MiniLM LoRA
  training it took 36% of every step. `fast_dropout` keeps an element when a 16-bit random word clears
  the threshold, so the drop probability is p rounded to 1/65536. For bf16 and float32 it is one fused
  pass (`dropout_kernel.py`, ~10x faster again, no mask kept for backward); other dtypes build the mask
  from numpy's bulk random bits.
- Attention: a decode step (one query token per sequence, padded KV cache) through transformers' SDPA
  path took ~2.6 ms per layer call for SmolLM2 at batch 8 (68% of the step), because the KV heads are
  repeated for every query head. `cpu_attention` folds the query heads that share a KV head into
  SDPA's query-length axis instead (0.33 ms, same kernel). Training attention with dropout falls back
  in SDPA to a math path that uses `bernoulli_`; here it is plain matmuls + `fast_dropout`. Everything
  else goes to transformers' own SDPA function.

Both are installed through public extension points: the attention function is registered with
transformers' `AttentionInterface` (selected per model with `set_attn_implementation`), and dropout
modules are swapped for a `nn.Dropout` subclass, the way peft swaps linear layers. On other devices
both defer to the stock ops. Turn them off with `model.cpu_kernels=false`.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "tunelab_cpu"
_WORDS = 4  # 16-bit random words per int64 draw


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    # Seeded by one draw from torch's generator, so torch.manual_seed still makes a run repeatable.
    seed = int(torch.randint(0, 2**62, ()))
    if x.dtype in (torch.bfloat16, torch.float32):
        from tunelab.models.dropout_kernel import FusedDropout  # numba: imported only where dropout runs

        return FusedDropout.apply(x, p, seed)
    n = x.numel()
    # The bits come from numpy's SFC64 (2x torch.randint's speed here).
    words = torch.from_numpy(np.random.SFC64(seed).random_raw(-(-n // _WORDS)).view(np.int16)[:n])
    keep = words.view(x.shape) >= round(p * 65536) - 32768  # P(drop) = round(p * 65536) / 65536
    return x * _scaled_mask(keep, 1.0 / (1.0 - p), x.dtype)


_SAME_WIDTH_INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def _scaled_mask(keep: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """`keep` as `scale` / 0 in `dtype`. Built as integer bit patterns (0 is +0.0) because torch's
    bool -> bf16 cast is not vectorized: 0.23 ms for a 32x41x384 mask with the scaling, 0.02 ms this way."""
    ints = _SAME_WIDTH_INT.get(dtype)
    if ints is None:
        return keep.to(dtype).mul_(scale)
    return (keep.to(ints) * _bits(scale, dtype)).view(dtype)


@functools.cache
def _bits(value: float, dtype: torch.dtype) -> int:
    return int(torch.tensor(value, dtype=dtype).view(_SAME_WIDTH_INT[dtype]))


class FastDropout(nn.Dropout):
    """nn.Dropout with `fast_dropout` on CPU (same p, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def cpu_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An `AttentionInterface` function: (batch, heads, q_len, head_dim) in, (batch, q_len, heads, head_dim) out."""
    if query.device.type != "cpu" or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    q_len, d = query.shape[2], query.shape[3]
    scale = scaling if scaling is not None else d**-0.5
    if q_len == 1 and dropout == 0.0:
        return _decode_step(query, key, value, attention_mask, scale), None
    if dropout > 0.0:
        causal = kwargs.get("is_causal", getattr(module, "is_causal", False))
        return _math_attention(query, key, value, attention_mask, scale, dropout, causal), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _masked_(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """In place: `scores` is a fresh product that autograd does not keep."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    return scores.add_(mask)


def _decode_step(query, key, value, mask, scale):
    """One new token per sequence: the query heads that share a KV head become that head's "query
    length", so SDPA runs on the cache as stored (no repeat of the KV heads) with its own numerics."""
    b, h, _, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query.reshape(b, kv_heads, h // kv_heads, d)
    if mask is not None:
        mask = mask[:, :, -1:, :kv_len]  # (b, 1, 1, kv_len): broadcasts over heads and the group
    out = nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scale)
    return out.reshape(b, h, 1, d).transpose(1, 2).contiguous()


def _math_attention(query, key, value, mask, scale, dropout, causal):
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is None and causal and query.shape[2] > 1:
        q_len, kv_len = query.shape[2], key.shape[2]
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    if mask is not None:
        mask = mask[..., : key.shape[2]]
    probs = torch.softmax(_masked_(scores, mask), dim=-1, dtype=torch.float32).to(value.dtype)  # as HF's eager
    probs = fast_dropout(probs, dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


AttentionInterface.register(NAME, cpu_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # same masks as SDPA expects


# torch's CPU GEMMs (oneDNN, through ideep) keep two caches of compiled kernels, one entry per matrix
# shape: oneDNN's own (ONEDNN_PRIMITIVE_CACHE_CAPACITY, 1024 by default) and ideep's (LRU_CACHE_CAPACITY,
# also 1024), each entry holding compiled code and scratch buffers. Length-grouped batches bring new
# shapes at almost every step, so memory in use grew ~3 MB per step and peak RSS with the data
# (sentiment, 2,000 tweets, Zen 5 bf16: 1.49-1.55 GB with only oneDNN's at 16, 1.25-1.28 GB with both,
# and faster). Both are read when the first GEMM of the process runs, so training (the Session) and the
# CLI cap them at start, never `import tunelab`; packed training, whose few shapes repeat, widens them
# again. Values the user exported always win.
KERNEL_CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
_USER_KERNEL_CACHE: dict[str, str] | None = None


def _user_values() -> dict[str, str]:
    global _USER_KERNEL_CACHE
    if _USER_KERNEL_CACHE is None:
        _USER_KERNEL_CACHE = {k: os.environ[k] for k in KERNEL_CACHE_VARS if k in os.environ}
    return _USER_KERNEL_CACHE


def cap_kernel_caches(shapes: int = 16) -> None:
    """Cap both kernel caches at `shapes` entries unless the user exported a size."""
    for var in KERNEL_CACHE_VARS:
        if var not in _user_values():
            os.environ[var] = str(shapes)


def widen_kernel_caches(shapes: int = 1024) -> None:
    """Let torch's CPU GEMM kernel caches keep `shapes` entries again. Packed causal-LM training repeats
    a few dozen shapes every step (rows x layers' maps x LoRA factors), more than 16: at 16 the kernels
    were rebuilt each step and SmolLM2 chat training ran ~15% slower. Must run before the first GEMM of
    the process (torch reads the sizes then); a value the user exported is kept."""
    cap_kernel_caches(shapes)


def prepare_dropout(model: nn.Module) -> None:
    """Before CPU training: load the fused dropout kernels if the model has dropout to run."""
    if any(isinstance(m, FastDropout) and m.p > 0 for m in model.modules()):
        from tunelab.models.dropout_kernel import warm

        warm()


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Switch a loaded transformers model to the kernels above, in place. Models that do not use the
    attention interface keep their attention (they still get the dropout); nothing is saved differently."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
    config = getattr(model, "config", None)
    if config is not None and config._attn_implementation == "sdpa" and model._can_set_attn_implementation():
        model.set_attn_implementation(NAME)
    return model
