"""Bottleneck adapters, written by us: y + up(act(down(y))) after a sublayer's output projection,
before its residual/LayerNorm. Houlsby: after attention and after the FFN; Pfeiffer: after the FFN
only. down: d -> d / reduction_factor; up is zero-initialized, so training starts at the base model."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field
from torch import nn

from tunelab.config.schema import MethodConfig
from tunelab.errors import TunelabError
from tunelab.methods.base import register
from tunelab.methods.own_common import Injected, OwnMethod, replace_module

# Output projections of the attention and feed-forward sublayers (regexes over module names):
# BERT-likes, T5 (self and cross attention), Llama/Mistral/Qwen, BART/Marian.
ATTN_OUT = [r"attention\.output\.dense$", r"\.(SelfAttention|EncDecAttention)\.o$", r"self_attn\.o_proj$",
            r"(self_attn|encoder_attn)\.out_proj$"]
FFN_OUT = [r"layer\.\d+\.output\.dense$", r"DenseReluDense\.wo$", r"mlp\.down_proj$", r"\.fc2$"]
ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class AdapterConfig(MethodConfig):
    name: Literal["adapter"] = "adapter"
    kind: Literal["houlsby", "pfeiffer"] = "houlsby"
    reduction_factor: int = Field(16, ge=1, description="bottleneck size = hidden size / reduction_factor")
    non_linearity: Literal["relu", "gelu", "swish", "tanh"] = "relu"
    attn_modules: list[str] | None = Field(None, description="regexes of attention output layers (default: known architectures)")
    ffn_modules: list[str] | None = Field(None, description="regexes of FFN output layers (default: known architectures)")


class Bottleneck(Injected):
    def __init__(self, base: nn.Linear, reduction_factor: int, act: str):
        super().__init__(base)
        d = base.out_features
        hidden = max(1, d // reduction_factor)
        self.down = nn.Linear(d, hidden)
        self.act = ACTS[act]()
        self.up = nn.Linear(hidden, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.to(base.weight.device)

    def extra(self, x, y):
        return y + self.up(self.act(self.down(y)))


@register
class AdapterMethod(OwnMethod):
    name = "adapter"
    config_cls = AdapterConfig
    mergeable = False
    why_not_mergeable = "a bottleneck adapter is a non-linear function of the layer output, not a weight update"

    def inject(self, model, head_modules):
        c = self.cfg
        patterns = list(c.ffn_modules or FFN_OUT)
        if c.kind == "houlsby":
            patterns += c.attn_modules or ATTN_OUT
        names = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and any(re.search(p, n) for p in patterns)
                 and not any(n == h or n.startswith(h + ".") for h in head_modules)]
        if not names:
            conv = any(type(m).__name__ == "Conv1D" for m in model.modules())
            raise TunelabError(f"adapter: no attention/FFN output layers recognized in {type(model).__name__}"
                               + (" (its Conv1D layers are not supported: adapters wrap nn.Linear)" if conv else "")
                               + "; set method.ffn_modules (and method.attn_modules) to regexes of nn.Linear names")
        for n in names:
            layer = Bottleneck(model.get_submodule(n), c.reduction_factor, c.non_linearity)
            replace_module(model, n, layer)
            for p in list(layer.down.parameters()) + list(layer.up.parameters()):
                p.requires_grad_(True)
