"""The architecture stays true: import-linter's contracts (pyproject.toml) hold, and task types are
not branched on outside the task units."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"


def test_layers_and_no_cycles():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(SRC.parents[1] / "pyproject.toml")], capture_output=True, text=True,
                          cwd=SRC.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_task_types_are_not_branched_on_outside_the_task_units():
    pattern = re.compile(r"task\.type\s*(==|!=|in\b|not in\b)|\.type\s*==\s*[\"'](classification|summarization|qa|translation|chat)")
    hits = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
            for p in SRC.rglob("*.py") if "tasks" not in p.relative_to(SRC).parts
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)
