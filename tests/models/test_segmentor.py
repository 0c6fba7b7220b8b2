"""Segmentor behaviour beyond the goldens: slide inference, batching, the dynamic convolution."""
import torch

import knet
from knet.models.knet.kernel_update_head import KernelUpdateHead
from knet.tasks import get_task


def _tiny(name="knet-r50-fcn-tiny", **kw):
    torch.manual_seed(0)
    model = knet.build_model(name, **kw)
    return model.eval()


def test_slide_with_one_window_equals_whole():
    model = _tiny()
    x = torch.randn(2, 3, 48, 56)
    with torch.no_grad():
        whole = model.inference(x, mode="whole")
        slide = model.inference(x, mode="slide", crop_size=(64, 64), stride=(32, 32))
    torch.testing.assert_close(slide, whole)


def test_slide_averages_overlapping_windows():
    model = _tiny()
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        slide = model.inference(x, mode="slide", crop_size=(40, 40), stride=(32, 32))
        # windows at x = 0..40 and 32..72: the overlap is the mean of both, the rest one window each
        left, right = model(x[..., :40]), model(x[..., 32:])
    # crops run as one batch here and one by one above: allow float rounding between the two
    close = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(slide[..., :32], left[..., :32], **close)
    torch.testing.assert_close(slide[..., 40:], right[..., 8:], **close)
    torch.testing.assert_close(slide[..., 32:40], (left[..., 32:] + right[..., :8]) / 2, **close)


def test_batch_equals_single_images():
    model = _tiny("knet-swin-t-upernet-tiny")
    x = torch.randn(3, 3, 40, 52)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_dynamic_conv_matches_per_image_conv2d():
    feats = torch.randn(2, 6, 5, 7)
    for k in (1, 3):
        kernels = torch.randn(2, 4, 6, k, k)
        out = KernelUpdateHead._dynamic_conv(feats, kernels)
        loop = torch.cat([torch.nn.functional.conv2d(feats[i:i + 1], kernels[i], padding=k // 2) for i in range(2)])
        torch.testing.assert_close(out, loop)


def test_losses_ignore_255_and_average_over_all_pixels():
    model = _tiny(num_classes=3, decode_head={"dropout_ratio": 0.0}, auxiliary_head={"dropout_ratio": 0.0})
    model.train()
    x = torch.randn(2, 3, 32, 32)
    labels = torch.full((2, 32, 32), 255, dtype=torch.long)
    losses = get_task("semantic").losses(model.outputs(x), labels, model.config)
    assert all(float(v.detach()) == 0.0 for v in losses.values())  # every pixel ignored, divided by all pixels
    labels[:, :16] = 1
    losses = get_task("semantic").losses(model.outputs(x), labels, model.config)
    with torch.no_grad():
        logits = model.decode_head(model.backbone(x))[0]
        logits = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
        summed = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="sum")
    # sum over labelled pixels divided by ALL pixels (2*32*32), not by the 2*16*32 labelled ones
    torch.testing.assert_close(losses["decode.loss_ce.s0"].detach(), summed / labels.numel())
