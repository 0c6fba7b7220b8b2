"""``ref_bench.py`` (mmsegmentation 1.2.2) on given weights, for side-by-side runs on realistic weights.

    REFERENCE_PYTHON benchmarks/reference_bench.py export SHORT OUT.pth [--realistic]
    REFERENCE_PYTHON benchmarks/reference_bench.py --weights W.pth infer SHORT SIZE [REPEATS]
    REFERENCE_PYTHON benchmarks/reference_bench.py --weights W.pth train SHORT BATCH SIZE [STEPS]

``ref_bench.py`` (``../shared/reference``) builds its model from the reference's random
initialisation and never loads weights. Here its builder is wrapped: ``export --realistic`` writes
that initialisation made like a trained network's (``realistic.make_realistic``, beside this file),
and ``--weights`` loads a file written that way into every model ``ref_bench`` builds, so the
reference times and computes on the very weights knet loads. Everything else is ``ref_bench.py``'s
own code and output (``best_s``, ``median_s``, ``peak_rss_mib``; ``REF_BENCH_SAVE``).
``reference_logits.py`` and ``reference_losses.py`` build their models through :func:`build`.
"""
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "reference"))
import ref_bench  # noqa: E402  (the reference's builder and timer, from ../shared/reference)
from realistic import make_realistic  # noqa: E402  (beside this file)

_build_initialised = ref_bench.build


def build(short: str, weights: Optional[str] = None, realistic: bool = False) -> torch.nn.Module:
    """``ref_bench.build(short)`` (the reference's initialisation), then ``weights`` loaded (a
    ``{'state_dict': ...}`` file) or, with ``realistic``, the statistics of a trained network."""
    model = _build_initialised(short)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    elif realistic:
        make_realistic(model)
    return model


def main(argv) -> None:
    weights = None
    if argv[:1] == ["--weights"]:
        weights, argv = argv[1], argv[2:]
    realistic = "--realistic" in argv
    argv = [a for a in argv if a != "--realistic"]
    if realistic and (weights or argv[:1] != ["export"]):
        sys.exit("--realistic applies to export without --weights")
    ref_bench.build = lambda short: build(short, weights, realistic)
    sys.argv = [ref_bench.__file__, *argv]
    ref_bench.main()


if __name__ == "__main__":
    main(sys.argv[1:])
