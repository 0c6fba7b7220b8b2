"""User-facing errors: the CLI prints their message on one line, without a traceback."""
from typing import Optional


class KnetError(Exception):
    """Base class of errors caused by the user's input (files, names, values).

    ``cli``: the message as the command line words it, where its advice differs (``--model NAME``
    rather than ``model=NAME``); ``knet`` prints :func:`cli_message`.
    """

    def __init__(self, *args: object, cli: Optional[str] = None) -> None:
        super().__init__(*args)
        self.cli = cli


def cli_message(err: BaseException) -> str:
    """What the command line prints of ``err``: its ``cli`` wording when it has one."""
    return getattr(err, "cli", None) or str(err)


class CheckpointError(KnetError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


class DataError(KnetError):
    """An unreadable or inconsistent image, label or dataset folder."""


class TrainingError(KnetError):
    """A training run that cannot start or continue (options, devices, resume state)."""


class TrainingDivergedError(TrainingError):
    """The loss became NaN or infinite."""
