"""User-facing errors: one line that says what is wrong and how to fix it."""


class TunelabError(Exception):
    """An error caused by the user's input (config, data, paths); the CLI prints it on one line
    and exits non-zero, without a traceback."""


class NonFiniteLossError(TunelabError):
    """Training produced a NaN/inf loss; carries the step so the caller can report it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class RunPaused(TunelabError):
    """Training was asked to stop (Ctrl-C, SIGTERM, the UI's stop button): the run folder holds a
    checkpoint at the step it stopped and `tunelab train --resume RUN` continues it."""
