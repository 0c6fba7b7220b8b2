"""``knet.utils.float_modes.flush_denormals``: denormal floats count as zero on every torch thread
within the block (products of them stop being slow, results do not move), and each thread has its
own mode back afterwards."""
from __future__ import annotations

import time

import pytest
import torch

from knet.utils.float_modes import _threads_flushing, denormals_flushed, flush_denormals

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero mode")

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


class PeakedAttention(torch.nn.Module):
    """Attention as peaked as a trained one (a position bias that falls steeply with distance):
    a sixth of its probabilities underflow into denormals."""

    def __init__(self, width: int = 256, tokens: int = 256) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        distance = (torch.arange(tokens)[:, None] - torch.arange(tokens)[None, :]).abs() % 24
        self.register_buffer("bias", -4.5 * distance.float())
        self.query = torch.nn.Parameter(torch.randn(width, width, generator=generator) / width)
        self.value = torch.nn.Parameter(torch.randn(width, width, generator=generator))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return (self.bias + 0.01 * (x @ self.query @ x.transpose(-1, -2))).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probabilities(x) @ x @ self.value


def _timed(function, repeats: int = 3) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def test_a_forward_that_produces_denormals_runs_faster_with_the_same_output():
    model = PeakedAttention().eval()
    x = torch.randn(8, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        p = model.probabilities(x)
        denormal = ((p > 0) & (p < SMALLEST_NORMAL)).float().mean().item()
        assert denormal > 0.1  # the model does produce them, where a trained one does: in its softmax
        plain = model(x)
        slow = _timed(lambda: model(x))
        with flush_denormals():
            flushed = model(x)
            fast = _timed(lambda: model(x))
    torch.testing.assert_close(flushed, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
    assert fast * 3 < slow, (fast, slow)


def test_every_thread_has_its_own_mode_back():
    threads = torch.get_num_threads()
    assert not any(_threads_flushing(threads))
    with flush_denormals():
        assert all(_threads_flushing(threads))
        with flush_denormals():  # nested: applied once
            assert all(_threads_flushing(threads))
        assert all(_threads_flushing(threads))
    assert not any(_threads_flushing(threads))
    with flush_denormals(enabled=False):
        assert not any(_threads_flushing(threads))
        with flush_denormals():  # a disabled block does not keep an inner one from applying
            assert all(_threads_flushing(threads))
        assert not any(_threads_flushing(threads))
    torch.set_flush_denormal(True)  # a caller's own choice stays
    try:
        with flush_denormals():
            pass
        assert denormals_flushed()
    finally:
        torch.set_flush_denormal(False)


def test_the_predict_path_flushes_during_its_forwards_only():
    import knet
    from knet.inference.pipeline import TorchRunner

    threads = torch.get_num_threads()
    model = knet.build_model("knet-r50-fcn-tiny").eval()
    for enabled in (True, False):
        runner = TorchRunner(model, flush_denormals=enabled)
        seen = []
        runner._inference = lambda x, **options: (seen.append(_threads_flushing(threads)), x)[1]
        runner(torch.zeros(1, 3, 32, 32))
        assert seen == [[enabled] * threads]
        assert not any(_threads_flushing(threads))
