"""``knet serve`` on the command line: its help, and the one-line errors before any model loads
(the server itself: tests/serve)."""
from __future__ import annotations

import importlib.util
import socket

import pytest

from knet.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_help_shows_how_to_run_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("--checkpoint PATH", "an .onnx file", "--host HOST", "--port N", "--device", "--tta",
                     "--max-pixels N", "--max-upload-mb X", "--queue-size N", "--batch-size N", "--quiet",
                     "0: a free port", 'pip install "knet-seg[serve]"', "example: knet serve --checkpoint"):
        assert fragment in text, fragment


def test_weights_are_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", "knet-r50-fcn-tiny"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --checkpoint" in capsys.readouterr().err


def test_without_the_extra_the_error_names_it(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", "--checkpoint", str(tmp_path)]) == 2
    assert _one_line_error(capsys) == ('knet serve: error: knet serve needs the serve extra (uvicorn missing): '
                                       'pip install "knet-seg[serve]"')


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be between 0 and 65535, got 70000"),
    (["--queue-size", "0"], "--queue-size must be at least 1, got 0"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be positive, got 0.0"),
])
def test_bad_options(capsys, tmp_path, argv, message):
    assert main(["serve", "--checkpoint", str(tmp_path), *argv]) == 2
    assert message in _one_line_error(capsys)


def test_a_taken_port_fails_before_the_model_loads(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        # tmp_path holds no model: the port is refused first.
        assert main(["serve", "--checkpoint", str(tmp_path), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in _one_line_error(capsys)
