"""The Python API in-process: the README's own example, a user's loop callback that stops training,
and the three bugs found while using it as a new user would (compare without metric_for_best, a plain
model folder served with the wrong context, switching method.name by override)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import TINY, read_summary

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_api() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its runs/ land here
    scope: dict = {}
    exec(compile(readme_python_api(), "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    run, summary, predictor = scope["run"], scope["summary"], scope["predictor"]
    assert run.complete and read_summary(run.path)["task"] == "classification"
    assert summary["steps"] == scope["state"]["step"] > 0 and (tmp_path / "runs").is_dir()
    assert len(list((tmp_path / "runs").iterdir())) == 2  # two sessions, two run folders
    out = predictor.predict(["what a great launch"])
    assert out[0]["label"] in predictor.labels and abs(sum(out[0]["scores"].values()) - 1) < 1e-4


class StopAt:
    """A user's callback: sees every step and validation, ends training at a chosen step."""

    def __init__(self, step: int):
        self.step, self.seen, self.validations = step, [], []

    def on_train_begin(self, loop):
        self.total = loop.state["total_steps"]

    def on_step_end(self, loop, record):
        self.seen.append((record["step"], record["loss"]))
        if record["step"] == self.step:
            loop.stop("enough")

    def on_evaluate(self, loop, metrics, improved):
        self.validations.append((loop.state["step"], metrics["macro_f1"], improved))

    def on_save(self, loop): ...

    def on_train_end(self, loop):
        self.ended = loop.state["step"]


def test_a_callback_watches_the_loop_and_stops_it(tmp_path):
    from tunelab.session import Session

    cb = StopAt(5)
    session = Session.from_recipe("sentiment-tiny", [*TINY, "train.epochs=3", "train.eval_every_steps=2",
                                                     f"output.dir={tmp_path / 'run'}"])
    session.run(callbacks=[cb])
    assert [s for s, _ in cb.seen] == [1, 2, 3, 4, 5] and cb.ended == 5 and cb.total > 5
    # validated at 2, 4 and once more at the stop (so the best checkpoint covers the last step)
    assert [s for s, _, _ in cb.validations] == [2, 4, 5]
    summary = read_summary(tmp_path / "run")
    assert summary["steps"] == 5 and summary["stop_reason"] == "enough"
    assert not summary["stopped_early"]  # that flag is for early stopping only
    assert summary["metric"] == "macro_f1" and summary["best_step"] in (2, 4, 5)
    # its times name the machine: the CPU as detected, the device and the threads the run used
    import torch

    from tunelab.runtime import cpu_description, machine_line

    machine, cpu = summary["machine"], cpu_description()
    assert (machine["cpu"], machine["cpu_kind"], machine["torch_capability"]) == (cpu["model"], cpu["kind"],
                                                                                cpu["torch_capability"])
    assert machine["device"] == "cpu" and machine["threads"] == torch.get_num_threads() and "gpu" not in machine
    assert f"| machine | {machine_line(machine)} |" in (tmp_path / "run" / "report.md").read_text()
    train_rows = [r for r in (json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                  if r["split"] == "train"]
    assert [(r["step"], r["loss"]) for r in train_rows] == cb.seen  # the log and the callback saw the same steps


def test_compare_uses_the_tasks_metric_when_the_recipe_names_none(tmp_path):
    """Bug: `tunelab compare sentiment-tiny --methods lora` reported `lora failed: KeyError: None`."""
    from tunelab.config import load_config
    from tunelab.workflows.compare import compare

    assert load_config("sentiment-tiny").train.metric_for_best is None  # the case the bug needs
    root = compare("sentiment-tiny", ["lora"], ["data.max_train_samples=160", "data.max_eval_samples=80",
                                                "compare.latency_repeats=1"], out=str(tmp_path / "cmp"))
    doc = json.loads((root / "compare.json").read_text())
    (lora,) = doc["results"]
    assert lora["status"] == "ok", lora.get("error")
    assert doc["metric"] == lora["metric"] == "macro_f1" and 0 <= lora["test_metric"] <= 1


def test_a_plain_decoder_folder_keeps_its_own_context(smol_tok):
    """Bug: a plain model folder got the default recipe's model.max_length=128, so a 300-token prompt
    with max_tokens=100 reached the model as 28 tokens while usage.prompt_tokens said 300."""
    from tunelab.models.catalog import resolve_model
    from tunelab.session import Predictor

    p = Predictor.from_model_folder(resolve_model("smollm2-135m-instruct"))
    assert p.kind == "generation" and p.context == p.model.config.max_position_embeddings >= 2048
    words = " ".join(f"w{i}" for i in range(400))
    ids = smol_tok(words, add_special_tokens=False)["input_ids"][:300]
    prompt = smol_tok.decode(ids)
    assert p.count_tokens(prompt) == 300
    gen = p.generation_config(max_new_tokens=100)
    assert len(p.prompt_ids(prompt, gen)) == 300  # what the server reports as usage.prompt_tokens
    seen = []
    hook = p.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        p.generate([prompt], p.generation_config(max_new_tokens=2))
    finally:
        hook.remove()
    assert seen[0] == 300  # the whole prompt reached the model


def test_switching_method_by_override_keeps_shared_keys_and_drops_the_rest():
    """Bug: the README's `tunelab train method.name=nblora method.bound=0.5` failed on `method.alpha`."""
    from tunelab.config import load_config
    from tunelab.errors import TunelabError

    lora = load_config(None, [])
    cfg = load_config(None, ["method.name=nblora", "method.bound=0.5"])
    assert cfg.method.name == "nblora" and cfg.method.bound == 0.5
    assert cfg.method.r == lora.method.r  # a key both methods have keeps the recipe's value
    assert not hasattr(cfg.method, "alpha")
    with pytest.raises(TunelabError, match="method.alpha"):  # said explicitly, it is still an error
        load_config(None, ["method.name=nblora", "method.alpha=3"])
