"""Training checkpoints of a work directory: keeping the newest and one best, atomic writes,
and loading weights for fine-tuning onto another number of classes."""
from __future__ import annotations

import pytest
import torch

import knet
from knet.engine.checkpoints import CLASS_DEPENDENT_KEYS, CheckpointManager, atomic_torch_save, load_for_finetuning
from knet.errors import CheckpointError, KnetError


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------
def test_checkpoint_manager_keeps_newest_and_one_best(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for it in (2, 4, 6):
        manager.save({"iteration": it}, it)
    assert [i for i, _ in manager.iteration_checkpoints()] == [4, 6]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "iter_6.pth"
    assert manager.latest() == tmp_path / "iter_6.pth"
    manager.save_best({"iteration": 4}, 4)
    manager.save_best({}, 6, copy_of=tmp_path / "iter_6.pth")
    assert [p.name for p in manager.best_checkpoints()] == ["best_mIoU_iter_6.pth"]
    assert torch.load(tmp_path / "best_mIoU_iter_6.pth")["iteration"] == 6
    (tmp_path / "last_checkpoint").write_text("iter_99.pth\n")  # names a missing file: fall back
    assert manager.latest() == tmp_path / "iter_6.pth"
    with pytest.raises(KnetError):
        CheckpointManager(tmp_path, keep=0)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("interrupted while writing")


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "iter_2.pth"
    atomic_torch_save({"iteration": 2}, path)
    with pytest.raises(RuntimeError):
        atomic_torch_save({"iteration": 3, "bad": _Unpicklable()}, path)
    assert torch.load(path)["iteration"] == 2  # the old complete file is still there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_2.pth"]  # no temporary left


def test_finetune_to_another_number_of_classes(tmp_path):
    torch.manual_seed(1)
    source = knet.build_model("knet-r50-fcn-tiny", num_classes=6)
    torch.save({"state_dict": source.state_dict(), "meta": {}}, tmp_path / "six.pth")
    torch.manual_seed(2)
    target = knet.build_model("knet-r50-fcn-tiny", num_classes=4)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    reinit = load_for_finetuning(target, tmp_path / "six.pth")
    assert reinit == list(CLASS_DEPENDENT_KEYS)
    state = target.state_dict()
    for key, value in state.items():
        expected = fresh[key] if key in reinit else source.state_dict()[key]
        assert torch.equal(value, expected), key
    # Same number of classes: everything loads, nothing is re-initialised.
    same = knet.build_model("knet-r50-fcn-tiny", num_classes=6)
    assert load_for_finetuning(same, tmp_path / "six.pth") == []
    assert torch.equal(same.state_dict()["auxiliary_head.conv_seg.weight"],
                       source.state_dict()["auxiliary_head.conv_seg.weight"])
    # Another architecture is refused with the keys named.
    other = knet.build_model("knet-r50-pspnet-tiny", num_classes=4)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_for_finetuning(other, tmp_path / "six.pth")
