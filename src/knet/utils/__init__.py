"""Small helpers shared by the engine and the command-line verbs."""
from .progress import ProgressBar, track

__all__ = ["ProgressBar", "track"]
