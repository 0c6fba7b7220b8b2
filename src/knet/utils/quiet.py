"""Keep a library's progress prints (pycocotools') out of the user's log."""
from __future__ import annotations

import contextlib
import io


def quiet_stdout() -> contextlib.AbstractContextManager:
    """A context in which whatever is printed on stdout is dropped."""
    return contextlib.redirect_stdout(io.StringIO())
