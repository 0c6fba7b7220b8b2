"""The verbs' options: each shared option (knet.apps.options.SHARED_OPTIONS) reads the same on every
verb that has it, the verbs that run a model have the runtime options, and metavars follow one style."""
from __future__ import annotations

import argparse
from typing import Dict

import pytest

from knet.apps import options
from knet.cli import VERBS, build_parser


def _verb_options(verb: str) -> Dict[str, argparse.Action]:
    """Option string -> action of ``verb``'s parser."""
    parser = build_parser(verb)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {flag: action for action in sub.choices[verb]._actions for flag in action.option_strings}


@pytest.fixture(scope="module")
def parsers() -> Dict[str, Dict[str, argparse.Action]]:
    return {verb: _verb_options(verb) for verb in VERBS}


@pytest.mark.parametrize("flag", options.SHARED_OPTIONS)
def test_a_shared_option_reads_the_same_on_every_verb(parsers, flag):
    seen = {verb: found[flag] for verb, found in parsers.items() if flag in found}
    assert seen, f"{flag} is on no verb"
    described = {verb: (a.help, a.default, a.metavar, tuple(a.choices) if a.choices else None)
                 for verb, a in seen.items()}
    first = next(iter(described.values()))
    assert all(value == first for value in described.values()), described


@pytest.mark.parametrize("verb", options.MODEL_VERBS)
def test_the_verbs_that_run_a_model_have_the_runtime_options(parsers, verb):
    for flag in options.RUNTIME_OPTIONS:
        assert flag in parsers[verb], f"knet {verb} has no {flag}"
    assert parsers[verb]["--device"].default == "auto"


def test_metavars_follow_one_style(parsers):
    """Integers read N, other numbers X; options with choices show them."""
    for verb, found in parsers.items():
        for flag, action in found.items():
            if action.type is int:
                assert action.metavar == "N", (verb, flag, action.metavar)
            elif action.type is float:
                assert action.metavar == "X", (verb, flag, action.metavar)
            if action.choices:
                assert action.metavar is None, (verb, flag)


def test_the_weights_come_from_checkpoint_alone(parsers):
    for verb, found in parsers.items():
        assert "--pretrained" not in found and "--onnx" not in found, verb
    for verb in ("predict", "test", "benchmark", "export", "serve", "convert"):
        assert "--checkpoint" in parsers[verb], verb


def test_choices_where_the_values_are_known(parsers):
    assert tuple(parsers["export"]["--format"].choices) == ("onnx",)
    assert tuple(parsers["export"]["--quantize"].choices) == ("int8",)
    parser = build_parser("export")
    args = parser.parse_args(["export", "--checkpoint", "m.pth", "--out", "m.onnx", "--format", "ONNX",
                              "--quantize", "INT8"])
    assert (args.format, args.quantize) == ("onnx", "int8")
