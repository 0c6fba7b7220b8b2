"""The banded upsample + cross-entropy equals the plain one in value and gradient, without its
full-resolution tensors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from knet.losses.semantic import linear_weights, pixel_cross_entropy, pixel_cross_entropy_reference

IGNORE = 255

# (logits shape, label size, align_corners, chunk_elements): stride 4 as the models, sizes that do not
# divide, a downsampling, equal sizes, one band and bands of a few rows (shared border rows).
CASES = [
    ((2, 5, 16, 16), (64, 64), False, 1 << 22),
    ((2, 5, 16, 16), (64, 64), False, 2 * 5 * 64 * 3),
    ((2, 7, 13, 11), (50, 45), False, 700),
    ((1, 3, 9, 9), (33, 35), True, 97),
    ((2, 4, 8, 8), (8, 8), False, 100),
    ((2, 4, 40, 30), (20, 15), False, 100),
    ((1, 150, 7, 5), (29, 19), False, 150 * 19 * 2),
]


def _labels(n: int, c: int, size, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n, *size), generator=generator)
    labels[:, : max(1, size[0] // 5)] = IGNORE  # a band of ignored pixels ...
    labels[torch.rand(labels.shape, generator=generator) < 0.1] = IGNORE  # ... and scattered ones
    return labels


def _both(shape, size, align_corners, chunk_elements, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape, generator=generator)).requires_grad_(True)
    labels = _labels(shape[0], shape[1], size, seed)
    fused = pixel_cross_entropy(logits, labels, IGNORE, align_corners, chunk_elements=chunk_elements)
    (fused_grad,) = torch.autograd.grad(fused, logits)
    plain = pixel_cross_entropy_reference(logits, labels, IGNORE, align_corners)
    (plain_grad,) = torch.autograd.grad(plain, logits)
    return fused.detach(), fused_grad, plain.detach(), plain_grad


@pytest.mark.parametrize("shape, size, align_corners, chunk_elements", CASES)
def test_value_and_gradient_equal_the_plain_computation(shape, size, align_corners, chunk_elements):
    fused, fused_grad, plain, plain_grad = _both(shape, size, align_corners, chunk_elements)
    assert fused.dtype == torch.float32 and fused.shape == ()
    assert abs(float(fused) - float(plain)) <= 1e-6 * abs(float(plain))
    assert fused_grad.shape == plain_grad.shape
    assert float((fused_grad - plain_grad).abs().max()) <= 1e-5 * float(plain_grad.abs().max())


@pytest.mark.parametrize("in_size, out_size, align_corners", [
    (16, 64, False), (13, 50, False), (9, 33, True), (8, 8, False), (40, 20, False), (1, 7, False), (7, 1, True)])
def test_axis_weights_reproduce_interpolate(in_size, out_size, align_corners):
    x = torch.randn(in_size, 3)
    i0, i1, w0, w1 = linear_weights(in_size, out_size, align_corners)
    assert bool((i0 <= i1).all()) and bool((i1 - i0 <= 1).all()) and bool((i0[1:] >= i0[:-1]).all())
    mine = w0[:, None] * x[i0] + w1[:, None] * x[i1]
    theirs = F.interpolate(x.view(1, 1, in_size, 3), size=(out_size, 3), mode="bilinear",
                           align_corners=align_corners)[0, 0]
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


def test_every_pixel_ignored_gives_zero_loss_and_gradient():
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    labels = torch.full((2, 20, 20), IGNORE)
    loss = pixel_cross_entropy(logits, labels, IGNORE)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(logits.grad.abs().max()) == 0.0


def test_mean_is_over_all_pixels_ignored_ones_included():
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 16, 16))
    full = pixel_cross_entropy(logits, labels, IGNORE)
    half = labels.clone()
    half[:, 8:] = IGNORE
    per_pixel = F.cross_entropy(F.interpolate(logits, size=(16, 16), mode="bilinear"), labels, reduction="none")
    torch.testing.assert_close(full, per_pixel.mean())
    torch.testing.assert_close(pixel_cross_entropy(logits, half, IGNORE), per_pixel[:, :8].sum() / 256)


def test_the_loss_weight_scales_the_gradient():
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    labels = _labels(2, 3, (24, 24))
    (0.4 * pixel_cross_entropy(logits, labels, IGNORE)).backward()
    scaled = logits.grad.clone()
    logits.grad = None
    pixel_cross_entropy(logits, labels, IGNORE).backward()
    torch.testing.assert_close(scaled, 0.4 * logits.grad)


def test_half_precision_logits_get_a_gradient_of_their_dtype():
    logits = torch.randn(1, 3, 6, 6).to(torch.bfloat16).requires_grad_(True)
    labels = _labels(1, 3, (24, 24))
    loss = pixel_cross_entropy(logits, labels, IGNORE)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    reference = pixel_cross_entropy_reference(logits.detach().float(), labels, IGNORE)
    assert abs(float(loss.detach()) - float(reference)) <= 1e-5 * float(reference)


def test_keeps_no_full_resolution_tensor_for_backward():
    """The plain loss keeps (N, C, H, W) log-probabilities (and upsampled logits) for its backward
    pass; the banded one keeps only its inputs and the (N, H, W) log-sum-exp."""
    logits = torch.randn(2, 150, 16, 16, requires_grad=True)
    labels = _labels(2, 150, (64, 64))

    def saved_bytes(loss_fn) -> int:
        sizes = {}

        def pack(tensor):
            sizes[(tensor.data_ptr(), tuple(tensor.shape))] = tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss_fn(logits, labels, IGNORE)
        return sum(sizes.values())

    full = 2 * 150 * 64 * 64 * 4
    assert saved_bytes(pixel_cross_entropy_reference) >= full
    fused = saved_bytes(pixel_cross_entropy)
    assert fused <= logits.numel() * 4 + labels.numel() * 8 + 2 * 64 * 64 * 4
    assert fused < full / 10


@pytest.mark.parametrize("logits, labels, message", [
    (torch.randn(2, 3, 4, 4), torch.full((2, 8, 8), 3), "label 3 is neither a class index in [0, 3)"),
    (torch.randn(2, 3, 4, 4), torch.full((2, 8, 8), -1), "label -1"),
    (torch.randn(3, 4, 4), torch.zeros(2, 8, 8, dtype=torch.long), "logits must be (N, C, h, w)"),
    (torch.randn(2, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long), "labels must be (N, H, W)"),
    (torch.randn(2, 3, 4, 4), torch.zeros(2, 8, 8), "integer class indices"),
])
def test_bad_input_is_a_one_line_error(logits, labels, message):
    with pytest.raises(ValueError) as error:
        pixel_cross_entropy(logits, labels, IGNORE)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1
