"""The on-disk token cache (data/token_cache.py): a second encode of the same data reads the stored
ids; anything the ids depend on (data, length limit, chat template) gives a new entry; a damaged
entry is rebuilt; `data.token_cache=false` writes nothing."""

from __future__ import annotations

import copy

import pytest

from tunelab.config import load_config
from conftest import bound_task

CONVS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke"}, {"role": "assistant", "content": "Why did the chicken cross?"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}],  # an empty reply: still a row
    [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "It is 4."}],
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    return tmp_path / "tokens"


def entries(cache) -> list:
    return sorted(cache.glob("*.safetensors")) if cache.exists() else []


def encode(tok, convs=CONVS, *overrides):
    cfg = load_config(None, ["task.type=chat", "model.max_length=64", *overrides])
    return bound_task(cfg, tok).encode(convs)


def test_second_encode_reads_the_stored_ids(smol_tok, cache, monkeypatch):
    first = encode(smol_tok)
    assert len(entries(cache)) == 1

    def no_rendering(*a, **k):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr("tunelab.tasks.generative.Renderer", no_rendering)
    again = encode(smol_tok)
    assert again.input_ids == first.input_ids and again.labels == first.labels
    assert again.truncated == first.truncated


def test_what_the_ids_depend_on_makes_a_new_entry(smol_tok, cache):
    base = encode(smol_tok)
    shorter = encode(smol_tok, CONVS, "model.max_length=16")
    assert shorter.truncated > base.truncated == 0
    edited = copy.deepcopy(CONVS)
    edited[2][1]["content"] = "It is four."
    assert encode(smol_tok, edited).input_ids[2] != base.input_ids[2]
    other_template = copy.deepcopy(smol_tok)
    other_template.chat_template = other_template.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert encode(other_template).input_ids != base.input_ids
    assert len(entries(cache)) == 4


def test_a_damaged_entry_is_rebuilt(smol_tok, cache):
    good = encode(smol_tok)
    (path,) = entries(cache)
    path.write_bytes(path.read_bytes()[:40])
    rebuilt = encode(smol_tok)
    assert rebuilt.input_ids == good.input_ids and rebuilt.labels == good.labels
    assert path.stat().st_size > 40  # written again whole


def test_cache_off_writes_nothing(smol_tok, cache):
    encode(smol_tok, CONVS, "data.token_cache=false")
    assert entries(cache) == []
