"""knet.models.layers.resize: the bilinear resize that compiled graphs call as one operator."""
import pytest
import torch
import torch.nn.functional as F

from knet.models.layers import resize, resize_bilinear


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("align_corners", [False, True])
def test_the_resize_operator_is_atens_bilinear_in_the_inputs_layout(channels_last, align_corners):
    x = torch.randn(2, 5, 9, 13)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = resize_bilinear(x, 20, 31, align_corners)
    expected = F.interpolate(x, size=(20, 31), mode="bilinear", align_corners=align_corners)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # schema, fake implementation (shapes and strides) and tracing agree with the real one
    torch.library.opcheck(resize_bilinear, (x, 20, 31, align_corners),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_a_compiled_resize_calls_the_operator_and_equals_eager():
    """Inductor runs ``knet::resize_bilinear`` as it is (its own bilinear kernels were slower)."""
    from torch._inductor.utils import run_and_get_code

    x = torch.randn(1, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        compiled = torch.compile(lambda t: resize(t, (64, 48)) + 1, fullgraph=True)
        out, code = run_and_get_code(compiled, x)
    assert torch.equal(out, F.interpolate(x, size=(64, 48), mode="bilinear", align_corners=False) + 1)
    assert "knet.resize_bilinear" in "".join(code)
    # with gradients (a compiled training step) resize stays F.interpolate, which has a backward
    y = torch.randn(1, 2, 4, 4, requires_grad=True)
    torch.compile(lambda t: (resize(t, (8, 8)) ** 2).sum(), backend="aot_eager", fullgraph=True)(y).backward()
    z = y.detach().clone().requires_grad_()
    (F.interpolate(z, size=(8, 8), mode="bilinear") ** 2).sum().backward()
    assert torch.allclose(y.grad, z.grad, rtol=1e-6, atol=1e-6)
