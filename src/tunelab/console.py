"""One rich console and progress bars with ETA for every long step (loading, tokenizing, training,
evaluating)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=False, highlight=False)


def progress(on: Console | None = None) -> Progress:
    """The bar layout; `on`: another console than tunelab's (a display of its own)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=on or console,
        transient=False,
    )


@contextlib.contextmanager
def task_bar(description: str | None, total: int | None) -> Iterator[callable]:
    """Yield `advance(n=1, info="")`; the bar shows elapsed time and ETA. No description: no bar (the
    inference layer's request path, other processes than the main one)."""
    if description is None:
        yield lambda n=1, info=None: None
        return
    with progress() as p:
        tid = p.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            if info is None:
                p.advance(tid, n)
            else:
                p.update(tid, advance=n, info=info)

        yield advance


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """Spinner for steps with no known length (loading weights)."""
    with console.status(f"[bold blue]{message}"):
        yield


def quiet_libraries() -> None:
    """For the CLI and its worker processes (never on `import tunelab`): library chatter that says
    nothing actionable to a tunelab user is muted."""
    import logging
    import os
    import warnings

    # bitsandbytes' CPU backend tries to fetch an optional kernel from the hub at import and logs a
    # warning when it cannot (always, offline); its built-in CPU kernels are used either way.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # MLflow's store set-up ("Creating initial MLflow database tables...") and W&B's per-file lines.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its logger's level on import
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Library deprecation chatter (transformers 5 / peft).
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
