"""Every adaptation method on three tiny architectures built in code (a BERT-like encoder classifier,
T5ForConditionalGeneration, LlamaForCausalLM; hidden 32, 2 layers): a few optimizer steps change the
outputs, save -> load gives identical outputs, merged == unmerged within 1e-4 where the method can
merge, and a clear one-line TunelabError where it cannot. Unsupported (method, architecture) pairs
are listed in UNSUPPORTED with the reason, and the test checks that they fail with a TunelabError."""

from __future__ import annotations

import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, T5Config, T5ForConditionalGeneration)

from tunelab.errors import TunelabError
from tunelab.methods import get_method, method_names

torch.set_num_threads(1)


def make_encoder(d=32):
    return BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=d, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=2 * d, max_position_embeddings=64, num_labels=3))


def make_t5(d=32):
    return T5ForConditionalGeneration(T5Config(vocab_size=120, d_model=d, d_kv=d // 4, d_ff=2 * d, num_layers=2, num_heads=4,
                                               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def make_llama(d=32):
    return LlamaForCausalLM(LlamaConfig(vocab_size=120, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=0))


def make_gpt2(d=32):
    return GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=d, n_layer=2, n_head=4, n_positions=64))


ARCHS = {
    # name: (builder, head modules, peft task type)
    "encoder": (make_encoder, ["classifier"], "SEQ_CLS"),
    "t5": (make_t5, [], "SEQ_2_SEQ_LM"),
    "llama": (make_llama, [], "CAUSAL_LM"),
    "gpt2": (make_gpt2, [], "CAUSAL_LM"),  # Conv1D layers instead of nn.Linear
}

# Small, fast settings per method (dropout 0 so train-mode noise does not hide a bug).
SETTINGS = {
    "full": {}, "head": {"top_k_layers": 1},
    "lora": {"r": 4, "dropout": 0.0}, "loraplus": {"r": 4, "dropout": 0.0, "lr_ratio": 4},
    "adalora": {"init_r": 6, "target_r": 2, "dropout": 0.0, "tinit": 0.0, "tfinal": 0.0, "delta_t": 1},
    "qlora": {"r": 4, "dropout": 0.0}, "ia3": {}, "prefix": {"num_virtual_tokens": 4},
    "prompt": {"num_virtual_tokens": 4}, "ptuning": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "adapter": {"reduction_factor": 4}, "nblora": {"r": 4}, "scalora": {"r": 4, "merge_every": 1},
}

# (method, architecture) pairs that cannot work, and why. Each must fail with a one-line TunelabError.
UNSUPPORTED: dict[tuple[str, str], str] = {
    (m, "gpt2"): "GPT-2 implements its projections as transformers' Conv1D, not nn.Linear; tunelab's own "
                 "injected methods wrap nn.Linear only (the peft methods handle Conv1D)"
    for m in ("adapter", "nblora", "scalora")
}

MERGEABLE = {"full", "head", "lora", "loraplus", "adalora", "ia3", "nblora", "scalora"}


def batch_for(arch: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 120, (4, 10), generator=g)
    if arch == "encoder":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])}
    if arch == "t5":
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(2, 120, (4, 6), generator=g)}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def build_base(arch: str, method, tmp_path):
    """The same base weights every call; quantized on load where the method asks for it."""
    builder, _, _ = ARCHS[arch]
    extra = method.model_load_kwargs()
    torch.manual_seed(0)
    # bitsandbytes' CPU 4-bit kernels need input sizes that are multiples of its block size (64).
    model = builder(64) if extra else builder()
    if extra:
        folder = tmp_path / f"base-{arch}"
        if not folder.exists():
            model.save_pretrained(folder)
        model = type(model).from_pretrained(folder, **extra)
    return model


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    model.eval()
    return model(**batch).logits.float().clone()


def train_steps(method, model, batch, steps=3, lr=1e-2):
    groups = method.optimizer_groups(model, 0.0, lr) or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    opt = torch.optim.AdamW(groups, lr=lr)
    for step in range(1, steps + 1):
        model.train()
        loss = model(**batch).loss
        loss.backward()
        method.before_optimizer_step(model, opt, step, steps)
        opt.step()
        method.on_optimizer_step(model, opt, step, steps)
        opt.zero_grad()


def new_method(name: str):
    cls = get_method(name)
    return cls(cls.config_cls(**SETTINGS[name]))


def test_every_registered_method_is_in_the_matrix():
    assert sorted(SETTINGS) == method_names()


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_method_trains_saves_loads_merges(name, arch, tmp_path):
    _, head, task_type = ARCHS[arch]
    method = new_method(name)
    batch = batch_for(arch)
    if (name, arch) in UNSUPPORTED:
        with pytest.raises(TunelabError, match=r"nn\.Linear") as err:
            method.apply(build_base(arch, method, tmp_path), head_modules=head, peft_task_type=task_type)
        assert "\n" not in str(err.value)
        return
    model = method.apply(build_base(arch, method, tmp_path), head_modules=head, peft_task_type=task_type)
    assert any(p.requires_grad for p in model.parameters())
    before = logits(model, batch)
    train_steps(method, model, batch)
    after = logits(model, batch)
    assert not torch.allclose(before, after, atol=1e-6), "training did not change the outputs"

    method.save(model, tmp_path / "adapter")
    loader = new_method(name)
    loaded = loader.load(build_base(arch, loader, tmp_path), tmp_path / "adapter")
    reloaded = logits(loaded, batch)
    torch.testing.assert_close(reloaded, after, atol=1e-5, rtol=0)

    if name in MERGEABLE:
        merged = loader.merge(loaded)
        torch.testing.assert_close(logits(merged, batch), after, atol=1e-4, rtol=0)
    else:
        with pytest.raises(TunelabError, match="cannot be merged"):
            loader.merge(loaded)


@pytest.mark.parametrize("norm", ["spectral", "frobenius", "nuclear"])
def test_nblora_update_stays_within_its_norm_bound_at_a_huge_learning_rate(norm, tmp_path):
    from tunelab.methods.nblora import NbLoraConfig, NbLoraLinear, NbLoraMethod

    bound = 0.5
    method = NbLoraMethod(NbLoraConfig(r=4, bound=bound, norm=norm))
    model = method.apply(build_base("llama", method, tmp_path), head_modules=[], peft_task_type="CAUSAL_LM")
    train_steps(method, model, batch_for("llama"), steps=20, lr=10.0)  # would blow plain LoRA up
    layers = [m for m in model.modules() if isinstance(m, NbLoraLinear)]
    assert layers
    for m in layers:
        s = torch.linalg.svdvals(m.delta_weight().detach().double())
        assert s.max() > 1e-3  # it did train
        value = {"spectral": s.max(), "frobenius": s.norm(), "nuclear": s.sum()}[norm]
        assert value <= bound * (1 + 1e-5), f"{norm} norm {float(value):.4f} exceeds the bound {bound}"


@pytest.mark.parametrize("p", [float("inf"), 2.0, 1.0, 3.0])
def test_nblora_parameterization_has_the_papers_properties_exactly(p):
    """Cayley factors are semi-orthogonal, sigma_i(dW) <= s_i with ||s||_p = bound for any parameters,
    the update starts at 0, and the bound is attained: the paper's preimage of U S V^T maps to it."""
    from tunelab.methods.nblora import NbLoraLinear, cayley

    torch.manual_seed(0)
    d_out, d_in, r, bound = 16, 24, 4, 0.7
    layer = NbLoraLinear(torch.nn.Linear(d_in, d_out), r, bound, p, temperature=1.0, dropout=0.0)
    assert float(layer.delta_weight().detach().abs().max()) < 1e-6  # initialization: dW = 0
    with torch.no_grad():  # arbitrary, large free parameters
        for t in (layer.lora_A, layer.lora_B, *([layer.v] if layer.v is not None else [])):
            t.copy_(5 * torch.randn_like(t))
    Q = cayley(torch.cat([layer.lora_A.T, layer.lora_B.T])).double()
    torch.testing.assert_close(Q.T @ Q, torch.eye(r, dtype=torch.float64), atol=1e-5, rtol=0)
    s = layer.singular_bounds().detach().double()
    assert abs(float(s.norm(p=p)) - bound) < 1e-6  # ||s||_p = bound (p = inf: every s_i = bound)
    sigma = torch.linalg.svdvals(layer.delta_weight().detach().double())[:r]
    assert (sigma <= s.sort(descending=True).values + 1e-6).all(), (sigma, s)
    assert float(sigma.norm(p=p)) <= bound * (1 + 1e-6)

    # Attainment: A = U^T / sqrt2, B = V^T / sqrt2 gives 2 A^T S B = U S V^T; invert the Cayley map.
    U = torch.linalg.qr(torch.randn(d_out, r, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(d_in, r, dtype=torch.float64)).Q
    target = torch.cat([U, V]) / 2**0.5
    Q1, Q2, eye = target[:r], target[r:], torch.eye(r, dtype=torch.float64)
    Z = torch.linalg.solve(eye + Q1, eye - Q1)
    Y = -0.5 * Q2 @ (eye + Z)
    X = 0.5 * (Z - Y.T @ Y)
    torch.testing.assert_close(X, -X.T, atol=1e-9, rtol=0)  # Z - Y^T Y is skew, as the paper's form needs
    stacked = torch.cat([X, Y]).float()
    with torch.no_grad():
        layer.lora_A.copy_(stacked[:d_out].T)
        layer.lora_B.copy_(stacked[d_out:].T)
    s = layer.singular_bounds().detach().double()
    dW = layer.delta_weight().detach().double()
    torch.testing.assert_close(dW, U @ torch.diag(s) @ V.T, atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.svdvals(dW)[:r], s.sort(descending=True).values, atol=2e-5, rtol=0)


def test_scalora_accumulated_update_exceeds_rank_r(tmp_path):
    from tunelab.methods.scalora import ScaLoraConfig, ScaLoraLinear, ScaLoraMethod

    r = 2
    method = ScaLoraMethod(ScaLoraConfig(r=r, merge_every=2))
    torch.manual_seed(0)
    base = make_llama()
    original = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    model = method.apply(base, head_modules=[], peft_task_type="CAUSAL_LM")
    train_steps(method, model, batch_for("llama"), steps=12, lr=1e-2)
    ranks = []
    for name, m in model.named_modules():
        if isinstance(m, ScaLoraLinear):
            # the frozen weight is never written: everything trained is in delta_weight (merged + live)
            torch.testing.assert_close(m.base.weight.detach(), original[name], atol=0, rtol=0)
            total = m.delta_weight().detach()
            assert float(m.merged.abs().max()) > 0  # merges happened
            ranks.append(int(torch.linalg.matrix_rank(total.double(), rtol=1e-6)))
    assert max(ranks) > r, f"accumulated ranks {ranks} never exceed r={r}"


def test_qlora_reports_base_memory_before_and_after_quantization(tmp_path):
    method = new_method("qlora")
    method.apply(build_base("llama", method, tmp_path), head_modules=[], peft_task_type="CAUSAL_LM")
    info = method.info()
    assert 0 < info["base_mb_quantized"] < info["base_mb_full_precision"]


LORA_VARIANTS = {"rslora": {"use_rslora": True}, "dora": {"use_dora": True}, "pissa": {"init": "pissa"},
                 "olora": {"init": "olora"}}


@pytest.mark.parametrize("arch", ["encoder", "llama"])
@pytest.mark.parametrize("variant", sorted(LORA_VARIANTS))
def test_lora_options_train_reload_on_the_original_base_and_merge(variant, arch, tmp_path):
    """rsLoRA, DoRA, PiSSA and OLoRA really change what trains, and the saved adapter works on the
    *original* base (PiSSA/OLoRA rewrite the base weights at init; the save converts the adapter back)."""
    from tunelab.methods.lora import LoraConfig, LoraMethod

    _, head, task_type = ARCHS[arch]
    batch = batch_for(arch)
    cfg = LoraConfig(r=4, dropout=0.0, **LORA_VARIANTS[variant])
    method = LoraMethod(cfg)
    model = method.apply(build_base(arch, method, tmp_path), head_modules=head, peft_task_type=task_type)
    pcfg = model.peft_config["default"]
    assert pcfg.use_rslora == cfg.use_rslora and pcfg.use_dora == cfg.use_dora
    before = logits(model, batch)
    train_steps(method, model, batch)
    after = logits(model, batch)
    assert not torch.allclose(before, after, atol=1e-6)
    method.save(model, tmp_path / "adapter")
    loader = LoraMethod(cfg)
    loaded = loader.load(build_base(arch, loader, tmp_path), tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded, batch), after, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits(loader.merge(loaded), batch), after, atol=1e-4, rtol=0)
