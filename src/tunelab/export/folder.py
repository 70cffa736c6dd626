"""Writing the export folder atomically: everything goes into a hidden temp folder next to the target,
which is renamed into place only when complete, so a crash never leaves a half-written export and an
existing folder is never touched unless --overwrite says so."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError

MARKER = "tunelab_export.json"


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse before any work is done: an existing folder needs --overwrite, and --overwrite only ever
    replaces an earlier export (or an empty folder), never e.g. a run folder given by mistake."""
    if not out.exists():
        return
    if not out.is_dir():
        raise TunelabError(f"'{out}' exists and is a file; choose another --out")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise TunelabError(f"'{out}' already exists; pass --overwrite to replace it or choose another --out")
    if not (out / MARKER).is_file():
        raise TunelabError(f"'{out}' is not a tunelab export folder (no {MARKER}); refusing to replace it, "
                           "choose another --out")


@contextlib.contextmanager
def staging(out: Path, overwrite: bool):
    """Yield a temp folder on the same file system as `out`; on success it replaces `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        check_target(out, overwrite)  # the target may have appeared while we worked
        readable(tmp)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def readable(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only (0700/0600) entries; give the export the usual umask-based
    permissions so e.g. a server running as another user can read it."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def folder_mb(path: Path, pattern: str = "*") -> float:
    """Size on disk of the files matching `pattern` (MiB)."""
    return round(sum(f.stat().st_size for f in Path(path).rglob(pattern) if f.is_file()) / 2**20, 2)
