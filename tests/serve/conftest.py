"""Fixtures of the ``knet serve`` tests (the serve extra is part of the test extra: no skipping)."""
from __future__ import annotations

from pathlib import Path

import pytest

from serve_helpers import save_tiny


@pytest.fixture(scope="session")
def semantic_dir(tmp_path_factory) -> Path:
    """knet-r50-fcn-tiny (ADE20K's 150 classes and palette)."""
    return save_tiny(tmp_path_factory.mktemp("serve") / "fcn-tiny", "knet-r50-fcn-tiny")


@pytest.fixture(scope="session")
def panoptic_dir(tmp_path_factory) -> Path:
    """knet-r50-fpn-panoptic-tiny (COCO's 133 panoptic classes)."""
    return save_tiny(tmp_path_factory.mktemp("serve") / "panoptic-tiny", "knet-r50-fpn-panoptic-tiny")
