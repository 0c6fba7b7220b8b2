"""The package's layers: a module never imports from a layer above its own (the command line sits
on top; nothing below it imports ``knet.apps``). Lazy imports inside functions count too."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "knet"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"

# Lowest first. A module belongs to the layer of its longest matching prefix.
LAYERS = [
    ("knet.errors", "knet.config", "knet.utils"),
    ("knet.data",),
    ("knet.presets",),
    ("knet.models.layers", "knet.models.outputs"),
    ("knet.losses", "knet.metrics", "knet.postprocess"),
    ("knet.models",),
    ("knet.checkpoint",),
    # What the tasks build on: the test pipelines and the model-runner interface, the Segmenter's
    # result objects, the pictures.
    ("knet.inference.pipeline", "knet.inference.mask_pipeline", "knet.inference.results", "knet.inference.visualize"),
    ("knet.tasks",),
    # Above the tasks they hold: the Segmenter, the ONNX Runtime runner, the ONNX export.
    ("knet.inference", "knet.export"),
    ("knet.engine",),
    ("knet.apps", "knet.serve", "knet.cli", "knet.__main__"),
]


def layer_of(module: str) -> int:
    best, rank = "", None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    if rank is None:
        raise AssertionError(f"module {module} is in no layer of tests/test_layers.py: add it")
    return rank


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, absolute module) of every knet import in the file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "knet":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "knet":
                target = node.module
            else:
                continue
            if node.module is None or target in ("knet",):  # `from . import x`: x is a module
                for alias in node.names:
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


PACKAGE_ITSELF = ("knet", "knet.__version__")  # the package's own attributes, importable from anywhere
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_the_layer_table_covers_every_module():
    for path in SOURCES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_import_from_a_higher_layer(path):
    own = layer_of(module_name(path))
    for line, target in imports_of(path):
        if target in PACKAGE_ITSELF:
            continue
        assert layer_of(target) <= own, (
            f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (layer {layer_of(target)}) "
            f"from layer {own}: lower layers never import from higher ones")


def test_library_never_imports_the_command_line():
    apps = LAYERS.index(("knet.apps", "knet.serve", "knet.cli", "knet.__main__"))
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                 for path in SOURCES if layer_of(module_name(path)) < apps
                 for line, target in imports_of(path) if target not in PACKAGE_ITSELF and layer_of(target) == apps]
    assert offenders == []


def design_table() -> List[Set[str]]:
    """The module prefixes of each row of docs/design.md's layer table, in its order. A row starts
    two spaces in with its paths (``data/``, ``presets.py``) and the layer number; a line two spaces
    in without a number adds its paths to the row above; deeper-indented lines are descriptions."""
    text = DESIGN.read_text(encoding="utf-8")
    block = text[text.index("```\nsrc/knet/\n") + len("```\nsrc/knet/\n"):]
    block = block[:block.index("```")]
    rows: List[Tuple[int, Set[str]]] = []
    for line in block.splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue
        parts = re.split(r" {2,}", line.strip())
        modules = {"knet." + path.rstrip("/").removesuffix(".py").replace("/", ".") for path in parts[0].split()}
        if len(parts) > 1 and re.fullmatch(r"\d+", parts[1].split()[0]):
            rows.append((int(parts[1].split()[0]), modules))
        else:
            rows[-1][1].update(modules)
    assert [number for number, _ in rows] == list(range(len(rows))), "the table's layers are not numbered 0, 1, ..."
    return [modules for _, modules in rows]


def test_the_design_table_is_the_layer_table():
    # docs/design.md documents the layers this test enforces: the two cannot drift apart.
    assert design_table() == [set(prefixes) for prefixes in LAYERS]


def test_models_never_import_losses():
    # A model returns outputs and its task turns them into losses, so no model module calls a loss.
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                 for path in SOURCES if module_name(path).startswith("knet.models")
                 for line, target in imports_of(path) if target == "knet.losses" or target.startswith("knet.losses.")]
    assert offenders == []


def test_the_check_sees_lazy_and_relative_imports():
    # The walker itself: an import inside a function, relative to the package, is found.
    path = PACKAGE / "engine" / "evaluation.py"
    found = {target for _, target in imports_of(path)}
    assert "knet.inference.pipeline" in found and "knet.utils.progress" in found
