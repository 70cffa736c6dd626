"""The CPU speed paths keep the maths: fast dropout, tunelab_cpu attention, half weights, checkpointing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from unittest import mock

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from tunelab.models import cpu_kernels as ck
from tunelab.runtime import half_weights


def tiny_llama(**kw) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attn_implementation="sdpa", **kw)
    return LlamaForCausalLM(cfg)


def tiny_bert(**kw) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     attn_implementation="sdpa", num_labels=3, **kw)
    return BertForSequenceClassification(cfg)


def padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding, as batched generation uses
    mask[1, :2] = 0
    return ids, mask


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16, torch.float64])  # fused, fused, numpy, numpy
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_rate_scale_and_seed(p, dtype):
    x = (torch.rand(1000, 1000) + 1.0).to(dtype)  # no zeros of its own
    torch.manual_seed(3)
    y = ck.fast_dropout(x, p)
    assert y.dtype == dtype
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.003  # 1e6 draws: sd ~0.0005
    kept = y != 0
    if dtype == torch.bfloat16:  # scaled in float32 and rounded once, as torch's bf16 multiply by a scalar
        assert torch.equal(y[kept], (x[kept].float() * (1 / (1 - p))).to(dtype))
    else:
        torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    torch.manual_seed(3)
    assert torch.equal(ck.fast_dropout(x, p), y)  # torch.manual_seed makes it repeatable
    assert not torch.equal(ck.fast_dropout(x, p), y)
    assert ck.fast_dropout(x, p, training=False) is x


def test_fast_dropout_gradient_uses_the_same_mask():
    x = torch.randn(64, 96, requires_grad=True)
    y = ck.fast_dropout(x, 0.3)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)
    torch.testing.assert_close(x.grad[y != 0], torch.full_like(x.grad[y != 0], 1 / 0.7))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_dropout_keeps_no_mask_and_recomputes_it_in_backward(dtype):
    from tunelab.models.dropout_kernel import apply_mask

    x = torch.randn(37, 53, dtype=dtype).add_(5.0).requires_grad_(True)  # 1961 elements: a partial last block
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = ck.fast_dropout(x, 0.25)
    assert packed == []  # nothing kept for backward: the mask comes back from the seed
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad != 0, y != 0)
    scale = torch.tensor(1 / 0.75, dtype=torch.float32)
    assert torch.equal(x.grad[y != 0], (g[y != 0].float() * scale).to(dtype))
    # The same seed gives the same mask for any element type and for a strided view of the same values.
    a, b = apply_mask(torch.ones(1961), 0.25, 7), apply_mask(torch.ones(1961, dtype=torch.bfloat16), 0.25, 7)
    assert torch.equal(a != 0, b != 0) and not torch.equal(a != 0, apply_mask(torch.ones(1961), 0.25, 8) != 0)
    t = torch.randn(53, 37).t()
    assert torch.equal(apply_mask(t, 0.25, 7), apply_mask(t.contiguous(), 0.25, 7))


def test_use_cpu_kernels_keeps_modes_outputs_and_saved_config(tmp_path):
    model = tiny_bert().eval()
    ids, mask = padded_batch()
    before = model(input_ids=ids, attention_mask=mask).logits
    ck.use_cpu_kernels(model)
    assert model.config._attn_implementation == ck.NAME
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(isinstance(m, ck.FastDropout) and not m.training for m in drops)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)
    model.save_pretrained(tmp_path)
    assert ck.NAME not in (tmp_path / "config.json").read_text()  # plain transformers reloads it
    assert "attn_implementation" not in json.loads((tmp_path / "config.json").read_text())


def test_decode_attention_matches_sdpa_in_greedy_generation():
    model = tiny_llama().eval()
    ids, mask = padded_batch()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
              output_scores=True, return_dict_in_generate=True)
    stock = model.generate(**kw)
    ck.use_cpu_kernels(model)
    ours = model.generate(**kw)
    assert torch.equal(ours.sequences, stock.sequences)
    for a, b in zip(ours.scores, stock.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_dropout_mask_built_from_bits_equals_the_cast_mask(dtype):
    keep = torch.rand(64, 97) > 0.3
    for p in (0.1, 0.3, 0.5):
        assert torch.equal(ck._scaled_mask(keep, 1 / (1 - p), dtype), keep.to(dtype) * (1 / (1 - p)))


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert])
def test_training_attention_with_dropout(build):
    dropout = {"attention_dropout": 0.2} if build is tiny_llama else {"attention_probs_dropout_prob": 0.2,
                                                                      "hidden_dropout_prob": 0.0}
    model = build(**dropout).train()
    ids, mask = padded_batch()
    ck.use_cpu_kernels(model)
    out = lambda: model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    torch.manual_seed(5)
    a = out()
    torch.manual_seed(5)
    assert torch.equal(out(), a)  # repeatable
    assert not torch.equal(out(), a)  # and random
    # At a rate of 1e-9 the math path still runs but drops nothing (p rounds to 0 in 1/65536 steps), so
    # it must give stock SDPA's outputs and gradients on every real token (a query that is all padding
    # has no key to attend to and no loss).
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 1e-9
        if isinstance(m, torch.nn.Dropout):
            m.p = 1e-9
    if build is tiny_bert:
        model.config.attention_probs_dropout_prob = 1e-9
    real = mask.bool() if build is tiny_llama else slice(None)  # BERT: one logit row per sequence

    def out_and_grads():
        model.zero_grad()
        logits = out()[real]
        logits.square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with mock.patch.object(ck, "_math_attention", wraps=ck._math_attention) as math:
        ours, our_grads = out_and_grads()
    assert math.call_count == model.config.num_hidden_layers
    model.set_attn_implementation("sdpa")
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.0
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if build is tiny_bert:
        model.config.attention_probs_dropout_prob = 0.0
    stock, stock_grads = out_and_grads()
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)
    assert our_grads.keys() == stock_grads.keys()
    for n in stock_grads:
        torch.testing.assert_close(our_grads[n], stock_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_training_weights_halves_frozen_weights_only_and_restores_them_exactly():
    from peft import LoraConfig, get_peft_model

    from tunelab.runtime import training_weights

    torch.manual_seed(0)
    model = get_peft_model(tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                           LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS",
                                      init_lora_weights=False))  # B != 0: every factor gets a gradient
    ids, mask = padded_batch()
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora_inputs = []
    model.base_model.model.bert.encoder.layer[0].attention.self.query.lora_A["default"].register_forward_pre_hook(
        lambda m, args: lora_inputs.append(args[0].dtype))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref_grads = loss_and_grads()  # float32 weights under autocast
    with training_weights(model, "bf16", "cpu") as halved:
        assert halved
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        loss, grads = loss_and_grads()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(dtypes[n] == torch.bfloat16 for n in frozen)  # linear maps, norms, embeddings
    assert all(dtypes[n] == torch.float32 for n in ref_grads)  # LoRA factors and the new head: master weights
    assert lora_inputs == [torch.float32, torch.bfloat16]  # peft's up-cast of the adapter input is off inside
    # A bf16 base is not the same maths as float32 weights under autocast, but close to it.
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=0)
    assert all(grads[n].dtype == torch.float32 for n in ref_grads)
    flat = lambda g: torch.cat([g[n].flatten() for n in ref_grads])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(grads), flat(ref_grads), dim=0) > 0.99
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, originals[n]), n
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


def test_fp16_training_halves_only_the_frozen_linear_maps():
    from peft import LoraConfig, get_peft_model

    from tunelab.runtime import training_weights

    model = get_peft_model(tiny_bert(), LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    with training_weights(model, "fp16", "cpu"):
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"] == torch.float16
    assert dtypes["base_model.model.bert.encoder.layer.0.attention.output.LayerNorm.weight"] == torch.float32
    assert dtypes["base_model.model.bert.embeddings.word_embeddings.weight"] == torch.float32
    assert dtypes["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight"] == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_half_weights_is_a_no_op_for_fp32():
    model = tiny_llama()
    with half_weights(model, "fp32", "cpu", frozen_only=False) as halved:
        assert not halved
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_gradient_checkpointing_same_loss_and_gradients(tmp_path):
    from tunelab.config.load import load_config
    from tunelab.session import Session

    ids, mask = padded_batch()
    ids = ids.clamp(max=1000)
    results = []
    for gc in (False, True):
        cfg = load_config("sentiment-tiny", {"train": {"gradient_checkpointing": gc}, "output": {"dir": str(tmp_path / str(gc))}})
        session = Session.from_config(cfg)
        session.load_data()
        torch.manual_seed(0)
        model = session.build()
        model.train()
        torch.manual_seed(7)  # same dropout draws: non-reentrant checkpointing replays the RNG state
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2])).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5)


_CACHE_GROWTH = """
import ctypes, os
import sys
from tunelab.models.cpu_kernels import cap_kernel_caches, widen_kernel_caches
cap_kernel_caches()  # what the CLI and a Session do at start, unless the environment has sizes
import torch
if "widen" in sys.argv:  # what packed training does before its first GEMM
    widen_kernel_caches()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = Info
def in_use(): i = libc.mallinfo2(); return (i.uordblks + i.hblkhd) / 2**20
torch.set_num_threads(1)
w = torch.randn(256, 128, dtype=torch.bfloat16, requires_grad=True)
def step(rows):  # one bf16 GEMM forward + backward at a new shape, as each length-grouped batch brings
    torch.nn.functional.linear(torch.randn(rows, 128, dtype=torch.bfloat16, requires_grad=True), w).sum().backward()
for rows in range(8, 40): step(rows)
start = in_use()
for rows in range(40, 240): step(rows)
print(os.environ["LRU_CACHE_CAPACITY"], round(in_use() - start, 1))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads glibc's mallinfo2")
def test_kernel_caches_are_capped_so_memory_does_not_grow_with_batch_shapes():
    """200 new GEMM shapes: with the caps tunelab sets, memory in use stays put; with torch's defaults
    (which a user's environment can still choose, and wins) each shape keeps its compiled kernel."""
    def growth(*args, **caps):
        env = {k: v for k, v in os.environ.items() if k not in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")}
        out = subprocess.run([sys.executable, "-c", _CACHE_GROWTH, *args], capture_output=True, text=True, check=True,
                             env={**env, **caps}).stdout.split()
        return out[0], float(out[1])

    capped, default, widened, users = (growth(), growth(LRU_CACHE_CAPACITY="1024", ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024"),
                                       growth("widen"),  # packed training: torch's sizes again
                                       growth("widen", LRU_CACHE_CAPACITY="16", ONEDNN_PRIMITIVE_CACHE_CAPACITY="16"))
    assert (capped[0], default[0], widened[0], users[0]) == ("16", "1024", "1024", "16")  # the user's sizes win
    if default[1] <= 50:  # the effect must exist on this CPU before the caps can be shown to remove it
        import torch

        pytest.skip(f"bf16 GEMMs keep no per-shape kernels on this CPU ({torch.backends.cpu.get_cpu_capability()}: "
                    f"{default[1]} MB over 200 shapes with torch's defaults), so the caps have nothing to save here")
    assert capped[1] < 20 and widened[1] > 50 and users[1] < 20


def test_importing_tunelab_changes_nothing_in_the_process():
    """A library import sets no environment variables and no warning filters (the CLI and a Session
    set what they need when they start)."""
    script = ("import os, warnings, torch, transformers, peft, accelerate, pandas, sklearn, numba; "  # their own effects
              "env, filters = dict(os.environ), list(warnings.filters); "
              "import tunelab, tunelab.session, tunelab.config, tunelab.tasks, tunelab.methods; "
              "assert dict(os.environ) == env, set(os.environ) ^ set(env); "
              "assert list(warnings.filters) == filters, 'warning filters changed'; print('ok')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
