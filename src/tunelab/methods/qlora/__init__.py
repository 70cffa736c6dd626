"""QLoRA: LoRA over a base quantized by bitsandbytes on load: 4-bit NF4 with double quantization
(default) or 8-bit. The new task head is kept in full precision (skipped from quantization)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from tunelab.console import console
from tunelab.errors import TunelabError
from tunelab.methods.base import register
from tunelab.methods.lora.method import LoraConfig, LoraMethod
from tunelab.models.heads import FRESH_MODULES



class QLoraConfig(LoraConfig):
    name: Literal["qlora"] = "qlora"
    bits: Literal[4, 8] = Field(4, description="4: NF4/FP4 weights; 8: LLM.int8")
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="quantize the quantization constants too (4-bit)")
    compute_dtype: Literal["float32", "bfloat16"] = "float32"


@register
class QLoraMethod(LoraMethod):
    name = "qlora"
    config_cls = QLoraConfig
    mergeable = False
    why_not_mergeable = ("merging into a 4/8-bit base re-quantizes it and loses the adapter's precision; "
                         "load the adapter on a full-precision base (method lora) to merge")

    def model_load_kwargs(self, device: str | None = None) -> dict:
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise TunelabError(f"qlora needs bitsandbytes ({e}); pip install bitsandbytes==0.50.2") from None
        c = self.cfg
        if c.bits == 4:
            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=c.quant_type,
                                   bnb_4bit_use_double_quant=c.double_quant,
                                   bnb_4bit_compute_dtype=getattr(torch, c.compute_dtype),
                                   llm_int8_skip_modules=list(FRESH_MODULES))
        else:
            q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(FRESH_MODULES))
        return {"quantization_config": q, "device_map": device or ("cuda" if torch.cuda.is_available() else "cpu")}

    def apply(self, model, *, head_modules, peft_task_type):
        no_cpu_repacking(model)
        self._info = base_memory(model)
        console.print(f"QLoRA base memory: {self._info['base_mb_full_precision']:.1f} MB in fp32 -> "
                      f"{self._info['base_mb_quantized']:.1f} MB quantized ({self.cfg.bits}-bit)")
        return super().apply(model, head_modules=head_modules, peft_task_type=peft_task_type)

    def load(self, base, adapter_dir, *, trainable=False):
        no_cpu_repacking(base)
        return super().load(base, adapter_dir, trainable=trainable)

    def fresh_modules(self, head_modules):
        return sorted(set(head_modules) | set(FRESH_MODULES))

    def info(self) -> dict:
        return getattr(self, "_info", {})


def no_cpu_repacking(model) -> None:
    """bitsandbytes 0.50.2 on AVX512-BF16 CPUs repacks a Linear4bit's weight for a faster kernel on
    its first no-grad eval forward; a later training forward then runs that kernel, which has no
    autograd, and the LoRA gradients silently vanish (e.g. after the before-training evaluation).
    Turn the repacking off per layer (an instance flag the layer itself reads)."""
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def base_memory(model) -> dict:
    """Bytes the quantized base takes vs the same model in fp32 (every weight 4 bytes)."""
    quantized = model.get_memory_footprint()
    full = 0
    for m in model.modules():
        for p in m.parameters(recurse=False):
            # a packed 4-bit Params4bit holds 2 weights per byte; its logical shape is in quant_state
            qs = getattr(p, "quant_state", None)
            full += (qs.shape.numel() if qs is not None else p.numel()) * 4
        for b in m.buffers(recurse=False):
            full += b.numel() * b.element_size()
    return {"base_mb_full_precision": round(full / 2**20, 2), "base_mb_quantized": round(quantized / 2**20, 2)}
