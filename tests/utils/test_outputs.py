"""``knet.utils.outputs``: an output that would replace an input is refused, however it is named."""
from __future__ import annotations

import os

import pytest

from knet.errors import KnetError
from knet.utils.outputs import input_files, refuse_input_folders, refuse_overwriting_inputs


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"a")
    (folder / "b.jpg").write_bytes(b"b")
    return folder


def test_the_same_file_is_refused_by_any_name(tmp_path, photos):
    (tmp_path / "link").symlink_to(photos)
    os.link(photos / "b.jpg", tmp_path / "hard.jpg")
    for output in (photos / "a.png", tmp_path / "link" / "a.png", photos / "sub" / ".." / "a.png",
                   tmp_path / "hard.jpg"):
        with pytest.raises(KnetError, match=r"^--out-dir: writing .* would overwrite the input .*a.png|b.jpg"):
            refuse_overwriting_inputs([("--out-dir", output)], [photos / "a.png", photos / "b.jpg"])
    refuse_overwriting_inputs([("--out-dir", photos / "a_overlay.png"), ("--out-dir", photos / "c.png")],
                              [photos / "a.png", photos / "b.jpg"])
    assert (photos / "a.png").read_bytes() == b"a"


def test_a_folder_input_stands_for_its_files(tmp_path, photos):
    assert input_files([photos, None, tmp_path / "missing"]) == [photos / "a.png", photos / "b.jpg"]
    with pytest.raises(KnetError, match="would overwrite the input"):
        refuse_overwriting_inputs([("out_dir", photos / "a.png")], [photos])


def test_an_output_folder_named_after_the_inputs_may_not_be_an_input_folder(tmp_path, photos):
    (tmp_path / "again").symlink_to(photos)
    with pytest.raises(KnetError, match="^--show-dir .*again: the files written there would replace the inputs"):
        refuse_input_folders([("--show-dir", tmp_path / "again")], [photos])
    refuse_input_folders([("--show-dir", tmp_path / "vis"), ("--show-dir", None)], [photos])


def test_inputs_named_like_a_verbs_files_in_its_folder(tmp_path, photos):
    from knet.utils.outputs import inputs_named_like

    run = tmp_path / "run"
    run.mkdir()
    (run / "iter_3.pth").write_bytes(b"weights")
    (tmp_path / "start.pth").symlink_to(run / "iter_3.pth")
    found = inputs_named_like("--work-dir", run, ["iter_*.pth"], [tmp_path / "start.pth", photos / "a.png", None])
    assert found == [("--work-dir", run.resolve() / "iter_3.pth")]
    assert inputs_named_like("--work-dir", run, ["best_*.pth"], [run / "iter_3.pth"]) == []
