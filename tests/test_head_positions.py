"""The last layer of a first-token classifier computes position 0 only, with the same logits and gradients."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

from tunelab.models import cpu_kernels as ck
from tunelab.models.head_positions import computes_first_token_only, first_token_only, restore_all_positions


def tiny_bert(attn: str, dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_labels=3, attn_implementation=attn, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(cfg)


def batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # right padding, as the classification collator pads
    mask[2, 10:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1])}


def lora(model):
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0,
                                            task_type="SEQ_CLS"))


def loss_and_grads(model):
    model.train()
    model.zero_grad()
    out = model(**batch())
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("attn", ["sdpa", "eager", ck.NAME])
def test_same_logits_and_gradients_as_every_position(attn):
    stock = lora(tiny_bert(attn))
    fast = lora(tiny_bert(attn))
    assert first_token_only(fast)
    assert type(fast.base_model.model.bert.encoder.layer[-1]).__name__ == "FirstTokenBertLayer"
    assert type(fast.base_model.model.bert.encoder.layer[0]).__name__ == "BertLayer"  # only the last layer
    logits, grads = loss_and_grads(stock)
    fast_logits, fast_grads = loss_and_grads(fast)
    torch.testing.assert_close(fast_logits, logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == fast_grads.keys() and any("layer.1" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # The saved state is the stock model's: same keys, and the class swap back gives all positions again.
    assert stock.state_dict().keys() == fast.state_dict().keys()
    hidden = fast.base_model.model.bert(input_ids=batch()["input_ids"]).last_hidden_state
    assert hidden.shape[1] == 1
    assert computes_first_token_only(fast) and not computes_first_token_only(stock)
    restore_all_positions(fast)
    assert not computes_first_token_only(fast)
    assert fast.base_model.model.bert(input_ids=batch()["input_ids"]).last_hidden_state.shape[1] == 12


def test_dropout_still_applies_in_the_last_layer():
    model = tiny_bert(ck.NAME, dropout=0.3)
    ck.use_cpu_kernels(model)
    first_token_only(model)
    model.train()
    inputs = batch()
    torch.manual_seed(5)
    a = model(**inputs).logits
    torch.manual_seed(6)
    b = model(**inputs).logits
    torch.manual_seed(5)
    assert torch.equal(model(**inputs).logits, a)  # the seed repeats it
    assert not torch.allclose(a, b)  # different masks, different logits
    model.eval()
    assert torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_adapter_saved_from_it_loads_in_plain_peft(tmp_path):
    model = lora(tiny_bert("sdpa"))
    first_token_only(model)
    model.train()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).zero_grad()
    model(**batch()).loss.backward()
    for p in model.parameters():
        if p.grad is not None:
            p.data -= 0.5 * p.grad
    model.eval()
    expected = model(**batch()).logits
    model.save_pretrained(tmp_path)
    plain = PeftModel.from_pretrained(tiny_bert("sdpa"), tmp_path).eval()
    assert type(plain.base_model.model.bert.encoder.layer[-1]).__name__ == "BertLayer"
    torch.testing.assert_close(plain(**batch()).logits, expected, rtol=1e-5, atol=1e-6)


def test_other_heads_are_left_alone():
    torch.manual_seed(0)
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                                       num_hidden_layers=2, num_attention_heads=4, num_labels=2))
    assert not first_token_only(llama)  # it reads the last real token
    bert = tiny_bert("sdpa")
    bert.config._attn_implementation = "flash_attention_2"  # unpads rows its own way: not tested, not applied
    assert not first_token_only(bert)


def test_gradient_checkpointing_keeps_the_same_gradients():
    stock, fast = lora(tiny_bert("sdpa")), lora(tiny_bert("sdpa"))
    first_token_only(fast)
    for model in (stock, fast):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    (logits, grads), (fast_logits, fast_grads) = loss_and_grads(stock), loss_and_grads(fast)
    torch.testing.assert_close(fast_logits, logits, rtol=1e-5, atol=1e-6)
    assert grads.keys() == fast_grads.keys()
    for name in grads:
        torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
