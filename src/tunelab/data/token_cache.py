"""Tokenized datasets kept on disk, keyed by a hash of everything the token ids depend on: the examples
themselves, the tokenizer (vocabulary, merges, special tokens, chat template), the length limits and
the source of the code that encodes them. A changed input is a new key, so an entry is never stale.

Written by hand because `datasets`' own cache keys on a fingerprint of the transform function and
its arguments, which does not cover the tokenizer's chat template or our prompt rendering, and would
need the conversations turned into an Arrow table first. Rendering chat templates is the slow part:
3,615 chitchat conversations took 29 s to encode on the CPU here, and a run encodes its test split
again for each before/after evaluation.

Format: one safetensors file per entry; a column of variable-length id lists is stored as its flat
int32 values plus int64 row offsets. A cache that cannot be read or written is skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from tunelab.console import console
from tunelab.models.catalog import cache_dir


def tokenizer_fingerprint(tok) -> str:
    """A hash of what decides the tokenizer's output: its full serialized state when it is a fast
    (Rust) tokenizer, else its vocabulary; plus special tokens and the chat template."""
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([tok.all_special_tokens, getattr(tok, "chat_template", None), tok.model_max_length],
                        default=str).encode())
    return h.hexdigest()


def entry_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _path(key: str) -> Path:
    return cache_dir() / "tokens" / f"{key}.safetensors"


def load(key: str) -> tuple[dict[str, list[list[int]]], dict[str, str]] | None:
    """The columns and metadata stored under `key`, or None."""
    from safetensors import safe_open

    path = _path(key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            columns = {}
            for name in json.loads(meta["columns"]):
                values, offsets = f.get_tensor(f"{name}.values"), f.get_tensor(f"{name}.offsets")
                columns[name] = [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
        return columns, meta
    except Exception as e:  # a damaged entry is rebuilt, not trusted
        console.print(f"[yellow]Ignoring unreadable token cache entry {path.name}: {e}[/]")
        return None


def save(key: str, columns: dict[str, list[list[int]]], meta: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save_file

    path = _path(key)
    tensors = {}
    for name, rows in columns.items():
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        tensors[f"{name}.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = [t for r in rows for t in r]
        tensors[f"{name}.values"] = np.asarray(flat, dtype=np.int32).reshape(-1)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={**(meta or {}), "columns": json.dumps(list(columns))})
        os.replace(tmp, path)  # readers see a whole entry or none
    except OSError as e:
        tmp.unlink(missing_ok=True)
        console.print(f"[yellow]Token cache not written ({e}); set TUNELAB_CACHE to a writable folder[/]")
