"""Every preset's network on CUDA computes what it computes on the CPU (whose outputs the golden
tests pin to the reference's). These tests skip without a CUDA GPU."""
from __future__ import annotations

import pytest
import torch

import knet
from knet.presets import list_presets
from tests.conftest import needs_cuda

pytestmark = needs_cuda

TINY = [name for name in list_presets() if name.endswith("-tiny")]


def _outputs(model, images):
    """Semantic: (N, C, H, W) logits; panoptic/instance: (N, K, classes) class logits and the
    (N, K, H/4, W/4) mask logits."""
    with torch.no_grad():
        result = model.inference(images)
    return [result] if torch.is_tensor(result) else list(result)


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_preset_on_cuda_equals_the_cpu(name, no_tf32):
    torch.manual_seed(0)
    model = knet.build_model(name).eval()
    images = torch.randn(2, 3, 96, 128)
    on_cpu = _outputs(model, images)
    on_gpu = _outputs(model.cuda(), images.cuda())
    for cpu, gpu in zip(on_cpu, on_gpu):
        assert gpu.shape == cpu.shape
        scale = cpu.abs().max().item()
        assert (gpu.cpu() - cpu).abs().max().item() <= 1e-4 * scale, name
