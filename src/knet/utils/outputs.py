"""The one check every writing verb makes before any work: no output replaces one of its inputs.

Paths are compared as the filesystem sees them: resolved (symlinks and ``..`` followed), and an
output that already exists as another name of an input file (a hard link) counts too. A folder
given as an input stands for the files directly inside it (a native directory's
``model.safetensors`` and ``config.json``).
"""
from __future__ import annotations

import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ..errors import KnetError

PathLike = Union[str, os.PathLike]

__all__ = ["input_files", "inputs_named_like", "refuse_input_folders", "refuse_overwriting_inputs"]


def input_files(paths: Iterable[Optional[PathLike]]) -> List[Path]:
    """``paths`` as the files they stand for: a file as itself, a folder as the files directly
    inside it; None and paths that do not exist are left out."""
    files: List[Path] = []
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            files.extend(child for child in sorted(path.iterdir()) if child.is_file())
        elif path.exists():
            files.append(path)
    return files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def inputs_named_like(option: str, folder: PathLike, patterns: Sequence[str],
                      inputs: Iterable[Optional[PathLike]]) -> List[Tuple[str, Path]]:
    """``(option, path)`` outputs for :func:`refuse_overwriting_inputs` where a verb writes files
    whose names are only known as ``patterns`` (globs, e.g. ``iter_*.pth``): each input file that
    lies in ``folder`` (symlinks followed) under a name a pattern matches."""
    folder = Path(folder).resolve()
    named = []
    for path in input_files(inputs):
        target = path.resolve()
        if target.parent == folder and any(fnmatchcase(target.name, pattern) for pattern in patterns):
            named.append((option, folder / target.name))
    return named


def refuse_overwriting_inputs(outputs: Iterable[Tuple[str, PathLike]], inputs: Iterable[Optional[PathLike]]) -> None:
    """Raise a one-line :class:`~knet.errors.KnetError` when an output would replace an input.

    Args:
        outputs: ``(option, path)`` pairs: each file the verb is about to write and the option that
            chose it (``"--out-dir"``, ``"--out"``), for the message.
        inputs: the files (or folders, see :func:`input_files`) the verb reads.
    """
    files = input_files(inputs)
    resolved = {path.resolve(): path for path in files}
    for option, output in outputs:
        output = Path(output)
        target = output.resolve()
        source = resolved.get(target)
        if source is None and output.exists():
            source = next((f for f in files if _same_file(output, f)), None)
        if source is not None:
            shown = f"{output}" if target == output.absolute() else f"{output} (= {target})"
            raise KnetError(f"{option}: writing {shown} would overwrite the input {source}; "
                            "choose another output")


def refuse_input_folders(outputs: Iterable[Tuple[str, Optional[PathLike]]],
                         folders: Iterable[Optional[PathLike]]) -> None:
    """Raise a one-line :class:`~knet.errors.KnetError` when an output folder, whose files are named
    after the inputs (``<image name>.png``), is one of the folders that hold the inputs."""
    resolved = {Path(folder).resolve(): Path(folder) for folder in folders if folder is not None}
    for option, output in outputs:
        if output is None:
            continue
        source = resolved.get(Path(output).resolve())
        if source is not None:
            raise KnetError(f"{option} {output}: the files written there would replace the inputs in {source}; "
                            "choose another folder")
