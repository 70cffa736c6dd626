"""Read user data files (CSV, JSONL, JSON, Parquet) with clear errors for the usual mistakes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tunelab.errors import TunelabError

_FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


def read_table(path: str | Path, fmt: str = "auto", encoding: str = "utf-8") -> pd.DataFrame:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TunelabError(f"data file '{path}' does not exist; check data.path / data.train_path")
    if fmt == "auto":
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise TunelabError(f"cannot tell the format of '{path.name}'; set data.format to csv, jsonl, json or parquet")
    try:
        if fmt == "csv":
            return pd.read_csv(path, encoding=encoding, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, encoding=encoding)
        if fmt == "json":
            return pd.read_json(path, encoding=encoding)
        return pd.read_parquet(path)
    except UnicodeDecodeError as e:
        raise TunelabError(
            f"data file '{path.name}' is not valid {encoding} text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            f"set data.encoding to the file's encoding, e.g. data.encoding=latin-1"
        ) from None
    except LookupError:
        raise TunelabError(f"unknown encoding '{encoding}'; set data.encoding to e.g. utf-8 or latin-1") from None
    except pd.errors.EmptyDataError:
        raise TunelabError(f"data file '{path.name}' is empty; it needs a header and at least one row") from None
    except (ValueError, pd.errors.ParserError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TunelabError(f"cannot read '{path.name}' as {fmt}: {first}") from None
