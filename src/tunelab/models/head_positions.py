"""Skip the last encoder layer's work on positions the classification head never reads.

BERT-style sequence classifiers (BERT, RoBERTa and kin) read one hidden state of the last layer: the
first token's (BERT's pooler takes `hidden[:, 0]`, RoBERTa's head `features[:, 0, :]`). Every other
position of that layer still serves as a key and a value for the first token's attention, but its
query, attention output, residuals, LayerNorms and feed-forward block feed nothing. `first_token_only`
makes the last layer compute only the first position's output: the same logits and the same gradients,
without ~10/12 of that layer's linear work (Q, the attention output map and the feed-forward block) for
all positions but one. On MiniLM (6 layers) that is ~1/7 of a LoRA step over all layers, and more where
the backward pass stops early (`method.top_k_layers`); measured in bench/README.md.

How: the layer object's class is swapped for a subclass whose `forward` runs the layer's own submodules
(so peft's LoRA wrappers, tunelab's dropout and the model's attention function all still apply) with
the query taken from position 0 only. Parameters, module names and the state dict are unchanged, so
adapters and merged weights save exactly as before; `restore_all_positions` swaps the class back. A
layer this does not recognise, or a call with a KV cache (prefix tuning), runs the stock forward.
"""

from __future__ import annotations

import functools
import sys

from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tunelab.models.cpu_kernels import NAME as CPU_ATTENTION

# The sequence-classification classes whose head reads only position 0 of the last hidden state (read
# in their transformers 5.x source). Decoder classifiers read the last real token and are left alone.
FIRST_TOKEN_HEADS = frozenset({
    "BertForSequenceClassification", "RobertaForSequenceClassification",
    "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification",
    "ElectraForSequenceClassification",
})
# The attention functions tested with one query row against all keys (tests/test_head_positions.py);
# others (flash, flex) unpad and pack rows their own way and keep the stock layer.
TESTED_ATTENTION = frozenset({"sdpa", "eager", CPU_ATTENTION})


class _FirstTokenForward:
    """Mixed in before the layer's own class: BertLayer's forward for query position 0 only."""

    def forward(self, hidden_states, attention_mask=None, *args, past_key_values=None, **kwargs):
        if past_key_values is not None or (args and args[0] is not None):  # a cache or cross-attention
            return super().forward(hidden_states, attention_mask, *args, past_key_values=past_key_values, **kwargs)
        sa = self.attention.self
        # A copy (32 x 384 values): the slice itself is not contiguous, and matmul then multiplies it by the
        # query weight expanded once per row (bmm, 2.2 ms forward + 1.6 ms backward per step in bf16 on the
        # AMX Xeon, ~1-3% of a step; no change capped to AVX2 fp32).
        first = hidden_states[:, :1].contiguous()
        heads = (hidden_states.shape[0], -1, sa.num_attention_heads, sa.attention_head_size)
        query = sa.query(first).view(heads).transpose(1, 2)
        key = sa.key(hidden_states).view(heads).transpose(1, 2)
        value = sa.value(hidden_states).view(heads).transpose(1, 2)
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = attention_mask[:, :, :1]  # padding-only masks: every query row is the same
        eager = sys.modules[type(sa).__module__].eager_attention_forward
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager)
        context, _ = attend(sa, query, key, value, attention_mask,
                            dropout=sa.dropout.p if sa.training else 0.0, scaling=sa.scaling)
        context = context.reshape(first.shape[0], 1, -1)
        return self.feed_forward_chunk(self.attention.output(context, first))


@functools.cache
def _first_token_class(cls: type) -> type:
    return type(f"FirstToken{cls.__name__}", (_FirstTokenForward, cls), {"_stock_class": cls})


def _bert_shaped(layer: nn.Module) -> bool:
    sa = getattr(getattr(layer, "attention", None), "self", None)
    return (sa is not None and all(hasattr(sa, a) for a in ("query", "key", "value", "num_attention_heads",
                                                           "attention_head_size", "scaling", "dropout", "config"))
            and hasattr(sys.modules[type(sa).__module__], "eager_attention_forward")
            and hasattr(layer.attention, "output") and hasattr(layer, "feed_forward_chunk")
            and not getattr(layer, "is_decoder", False))


def _last_layer(model: nn.Module) -> nn.Module | None:
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    return layers[-1] if isinstance(layers, nn.ModuleList) and len(layers) else None


def first_token_only(model: nn.Module) -> bool:
    """Make the last layer of a first-token sequence classifier compute position 0 only, in place.
    Returns whether it applied. `model` may be wrapped by peft."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    supported = (type(model).__name__ in FIRST_TOKEN_HEADS
                 and getattr(model.config, "_attn_implementation", None) in TESTED_ATTENTION)
    layer = _last_layer(model) if supported else None
    if layer is None or not _bert_shaped(layer):
        return False
    if not isinstance(layer, _FirstTokenForward):
        layer.__class__ = _first_token_class(type(layer))
    return True


def computes_first_token_only(model: nn.Module) -> bool:
    """Whether `first_token_only` is in effect on `model` (wrapped by peft or not)."""
    return any(isinstance(m, _FirstTokenForward) for m in model.modules())


def restore_all_positions(model: nn.Module) -> None:
    """Undo `first_token_only`: the last layer outputs every position again (for token-level uses)."""
    for module in model.modules():
        if isinstance(module, _FirstTokenForward):
            module.__class__ = module._stock_class
