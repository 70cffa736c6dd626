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


def progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextlib.contextmanager
def task_bar(description: str, total: int | None) -> Iterator[callable]:
    """Yield `advance(n=1, info="")`; the bar shows elapsed time and ETA."""
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
