"""Atomic writes: an interrupted write leaves the old file and no temporary behind."""
import pytest

from knet.errors import KnetError
from knet.utils.atomic import atomic_write, atomic_write_text


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    atomic_write_text(target, "old")

    def half_then_interrupt(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_interrupt)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_unwritable_target_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KnetError, match="cannot write"):
        atomic_write_text(blocker / "inside.txt", "data")
