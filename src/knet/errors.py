"""User-facing errors: the CLI prints their message on one line, without a traceback."""


class KnetError(Exception):
    """Base class of errors caused by the user's input (files, names, values)."""


class CheckpointError(KnetError):
    """A checkpoint file that cannot be read, or whose weights do not fit the model."""


class DataError(KnetError):
    """An unreadable or inconsistent image, label or dataset folder."""


class TrainingError(KnetError):
    """A training run that cannot start or continue (options, devices, resume state)."""


class TrainingDivergedError(TrainingError):
    """The loss became NaN or infinite."""
