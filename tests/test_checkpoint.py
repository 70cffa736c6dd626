import random

import numpy as np
import torch
from transformers import get_scheduler

from tunelab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)  # frozen weights are not checkpointed
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = get_scheduler("linear", opt, num_warmup_steps=2, num_training_steps=20)
    return model, opt, sched


def _step(model, opt, sched):
    x = torch.randn(16, 4)
    loss = model(torch.nn.functional.dropout(x, 0.5)).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.detach())


def test_roundtrip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = _setup()
    for _ in range(3):
        _step(model, opt, sched)
    random.seed(5)
    np.random.seed(5)
    save_checkpoint(tmp_path, 3, model, opt, sched, {"step": 3, "best": 0.5})
    expected = [_step(model, opt, sched) for _ in range(4)] + [random.random(), float(np.random.rand())]

    model2, opt2, sched2 = _setup(seed=0)  # frozen weights come from the base model in real runs
    torch.nn.init.normal_(model2[2].weight)  # trainable weights and RNG scrambled: the checkpoint restores them
    torch.manual_seed(123)
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, sched2)
    assert state == {"step": 3, "best": 0.5}
    got = [_step(model2, opt2, sched2) for _ in range(4)] + [random.random(), float(np.random.rand())]
    assert got == expected
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert not any(f.suffix == ".pt" or f.suffix == ".bin" for f in tmp_path.rglob("*"))  # no pickle


def test_half_written_checkpoint_is_ignored_and_old_ones_pruned(tmp_path):
    model, opt, sched = _setup()
    for step in (1, 2, 3):
        _step(model, opt, sched)
        save_checkpoint(tmp_path, step, model, opt, sched, {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000002", "step-0000003"]
    # A crash while writing step 4: temp folder with partial files, pointer not yet moved.
    tmp = tmp_path / ".step-0000004.tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-0000003"
    assert not tmp.exists()
    # A pointer to a folder that never completed falls back to the newest complete one.
    (tmp_path / "latest").write_text("step-0000009")
    assert latest_checkpoint(tmp_path).name == "step-0000003"
