"""The package's public surface: every name in ``knet.__all__`` resolves, ``dir(knet)`` lists them,
the lazy names are also imported under ``TYPE_CHECKING`` (what type checkers see), and the
distribution is ``knet-seg`` at ``knet.__version__``."""
from __future__ import annotations

import ast
import importlib.metadata
import inspect
from pathlib import Path

import knet

INIT = Path(knet.__file__)


def _type_checking_names() -> set:
    """The names the ``if TYPE_CHECKING:`` block of knet/__init__.py imports."""
    names = set()
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.dump(statement)
                names.update(alias.asname or alias.name for alias in statement.names)
    return names


def test_every_public_name_resolves():
    assert len(knet.__all__) == len(set(knet.__all__))
    for name in knet.__all__:
        assert getattr(knet, name) is not None, name
    assert inspect.isclass(knet.KNetMaskSegmentor) and knet.KNetMaskSegmentor.__module__ == "knet.models.mask_segmentor"


def test_dir_lists_the_public_names():
    assert set(knet.__all__) <= set(dir(knet))


def test_type_checking_imports_name_the_lazy_table():
    assert _type_checking_names() == set(knet._LAZY)
    eager = {"__version__", "KNetConfig", "KNetMaskConfig", "get_config", "list_presets"}
    assert set(knet.__all__) == set(knet._LAZY) | eager
    for name, (module, attr) in knet._LAZY.items():
        # the TYPE_CHECKING import and the lazy table point at the same object
        assert getattr(importlib.import_module(module), attr) is getattr(knet, name)


def test_distribution_name_and_version():
    assert importlib.metadata.version("knet-seg") == knet.__version__
    assert (INIT.parent / "py.typed").is_file()


def test_a_deprecation_warning_from_knet_code_fails():
    """pyproject's filterwarnings turns DeprecationWarnings attributed to a knet module into errors."""
    import pytest

    namespace = {"__name__": "knet._deprecation_probe"}
    exec(compile("import warnings\ndef old():\n    warnings.warn('old API', DeprecationWarning)\n", "<probe>", "exec"),
         namespace)
    with pytest.raises(DeprecationWarning):
        namespace["old"]()
