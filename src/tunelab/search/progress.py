"""The study's progress: a bar of trials with the best value so far, and a bar of the running trial's
steps. It draws on a console of its own: the trials' sessions run with tunelab's console quiet, and
rich allows one live display per console."""

from __future__ import annotations

from rich.console import Console

from tunelab.console import progress


class TuneProgress:
    def __init__(self, total: int | None, enabled: bool = True):
        self.enabled = enabled
        self.console = Console(highlight=False, quiet=not enabled)
        self.total = total

    def __enter__(self):
        self.bar = progress(self.console)
        self.bar.__enter__()
        self.trials = self.bar.add_task("Trials", total=self.total, info="")
        self.steps = self.bar.add_task("Trial", total=None, info="", visible=False)
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def start_trial(self, total_steps: int) -> None:
        self.bar.reset(self.steps, total=total_steps, visible=True, info="")

    def step(self, loss: float) -> None:
        self.bar.update(self.steps, advance=1, info=f"loss {loss:.4f}")

    def trial_done(self, line: str, best: str) -> None:
        self.bar.update(self.trials, advance=1, info=best)
        self.bar.update(self.steps, visible=False)
        self.bar.console.print(line)
