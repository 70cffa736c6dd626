"""The packaged GGUF SmolLM2 is converted once into a cached safetensors folder that plain
transformers loads (a real 135M Llama-architecture model)."""

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.config.schema import ModelConfig
from tunelab.models.catalog import cache_dir, resolve_model
from tunelab.tasks import make_task


def test_gguf_converted_once_and_loads_with_plain_transformers():
    path = Path(resolve_model("smollm2-135m-instruct"))
    assert path.parent == cache_dir() / "models"
    assert (path / "model.safetensors").is_file() and not list(path.parent.glob("*.tmp-*"))
    t = time.time()
    assert resolve_model("smollm2-135m-instruct") == str(path)  # cached: no second conversion
    assert time.time() - t < 1
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) > 130e6
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in prompt  # ChatML template kept
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_decoder_classification_head_on_smollm2():
    from tunelab.config import load_config

    task = make_task(load_config(None))
    task.labels = ["neg", "pos"]
    tok, model = task.load_model(ModelConfig(name="smollm2-135m-instruct"))
    assert task.head_modules(model) == ["score"] and tok.pad_token is not None
    batch = tok(["good", "a much longer bad sentence"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
