"""Weight formats an export can take: a cast (fp32/bf16/fp16), torch dynamic int8, bitsandbytes NF4.

int8-dynamic is a load-time transform: torch's dynamically quantized Linear keeps its int8 weights in
packed C++ objects that safetensors cannot hold (only pickle could), and transformers has no loader
for them. So the folder stores ordinary safetensors weights (in --dtype) that any transformers loads,
`tunelab_export.json` records the transform, and `load_export` applies it
(`torch.ao.quantization.quantize_dynamic` on every nn.Linear, int8 weights, activations quantized per
batch at run time; CPU only; torch 2.13 marks this API deprecated in favour of torchao, so a
later torch may need a port). NF4 is stored quantized: transformers saves and reloads
bitsandbytes 4-bit weights in safetensors with the quantization config in config.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.export.folder import MARKER

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZATIONS = ("none", "int8-dynamic", "nf4")
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification", "causal": "AutoModelForCausalLM",
                "seq2seq": "AutoModelForSeq2SeqLM"}


def int8_dynamic(model: nn.Module) -> nn.Module:
    """Every nn.Linear -> a dynamically quantized int8 Linear (weights int8 per tensor, activations
    quantized on the fly). Needs fp32 weights."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    # torch 2.13 flags its quantized tensor types as deprecated (moving to torchao, not installed here);
    # they work, and the notice says nothing a user of this export can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return quantize_dynamic(model.float(), {nn.Linear}, dtype=torch.qint8)


def state_mb(model: nn.Module) -> float:
    """Serialized size of a model's state (MiB), measured in memory: for the int8 model, what its
    weights take once quantized (packed int8 + scales), which is never written to the export."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return round(buf.tell() / 2**20, 2)


def nf4_config(dtype: torch.dtype, skip: list[str]):
    """4-bit NF4 with double quantization; `skip` modules (the task head, lm_head) stay unquantized."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise TunelabError(f"--quantize nf4 needs bitsandbytes ({e}); pip install bitsandbytes==0.50.2") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)


def load_export(folder: str | Path):
    """(tokenizer, model, info) of an export folder, with its recorded load-time transform applied.
    Plain transformers loads the same folder; this only adds the int8-dynamic step."""
    import transformers

    folder = Path(folder)
    info = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    cls = getattr(transformers, info["auto_class"])
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    kwargs = {"device_map": "cpu"} if info["quantization"] == "nf4" else {}
    model = cls.from_pretrained(folder, **kwargs).eval()
    if info["quantization"] == "int8-dynamic":
        model = int8_dynamic(model)
    return tok, model, info
