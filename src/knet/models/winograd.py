"""Winograd F(4x4, 3x3) convolution: a faster replacement for wide 3x3 convolutions on CPU.

A 3x3 stride-1 convolution computes each 4x4 block of outputs from a 6x6 block of inputs. Winograd's
minimal filtering algorithm (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016) does it with 36 multiplications per (input channel, output channel) pair instead of 144:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (per 6x6 input tile d, 3x3 filter g)

Summed over input channels, the elementwise product becomes 36 independent matrix products
(tiles x C) @ (C x K), which is where the time goes; the input transform is a few
elementwise passes over strided views of the padded input (B^T has 3-4 nonzeros a row), the
output transform a small matrix product.
On the CPUs knet runs on, oneDNN's direct convolution does not use Winograd, and the wide 3x3
convolutions of K-Net's heads (UPerNet's 2048 -> 512 bottleneck at stride 4, FCN's 2048 -> 512)
and of the dilated ResNet's last stages are most of a forward: this halves their time. The
backward pass is Winograd too (the transposed transforms, the same 36 matrix products), and
recomputes the transformed input instead of keeping it, so training keeps only what the direct
convolution keeps (its input).

Dilation ``d`` is handled without any extra arithmetic: the outputs whose coordinates are equal
modulo ``d`` form an undilated convolution over the inputs with the same residue, so tiles are
taken with a stride of ``d`` inside them.

The result differs from the direct convolution by float rounding only (the transforms' constants
are exact in binary except 1/6, 1/12 and 1/24, applied to the weights, in float64 for an
inference copy): about 1e-5 of
the output's magnitude in float32, against ~5e-6 for the direct convolution. Tensors are laid out
channels-last (N, H, W, C) internally; the output has the input's memory layout.
Large inputs (big images, batches of sliding windows) go through in bands of tile rows, so the
transformed data stays under ``TRANSFORM_BUDGET_BYTES``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .layers import memory_layout

OUTPUT_TILE = 4  # m in F(m x m, 3 x 3)
INPUT_TILE = OUTPUT_TILE + 2  # alpha = m + r - 1

# Lavin & Gray's F(4, 3) matrices, points 0, +-1, +-2 and infinity.
_B_T = [[4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0],
      [-1 / 6, -1 / 6, -1 / 6],
      [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6],
      [1 / 24, -1 / 12, 1 / 6],
      [0, 0, 1]]
_A_T = [[1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1]]

# Bytes of transformed input (36 x tiles x C floats) one band of tile rows may use: bands this
# small run the transforms and the matrix products faster than larger ones (their data stays in
# the caches), and keep training's peak memory low; but a band holds at least MIN_BAND_TILES
# tiles, below which the products of wide convolutions slow down.
TRANSFORM_BUDGET_BYTES = 16 * 2 ** 20
MIN_BAND_TILES = 256


# Moving a (C, H, W) map into (H, W, C) order and back, in blocks: one strided copy of the whole
# map reads or writes with a stride of H W floats, several times slower than these blocks.
_TO_LAST_CHANNELS = 64
_TO_FIRST_ROWS, _TO_FIRST_CHANNELS = 4, 128


def _copy_to_channels_last(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out[h, w, c] = x[c, h, w]`` for an (H, W, C) view ``out`` and a (C, H, W) ``x``."""
    if x.stride(0) == 1:  # channels-last already: a plain copy reads it in order
        out.copy_(x.permute(1, 2, 0))
        return
    for c in range(0, x.shape[0], _TO_LAST_CHANNELS):
        out[:, :, c:c + _TO_LAST_CHANNELS].copy_(x[c:c + _TO_LAST_CHANNELS].permute(1, 2, 0))


def _copy_to_channels_first(out: torch.Tensor, y: torch.Tensor) -> None:
    """``out[c, h, w] = y[h, w, c]`` for a (C, H, W) ``out`` and an (H, W, C) view ``y``."""
    if out.stride(0) == 1:
        out.copy_(y.permute(2, 0, 1))
        return
    for h in range(0, y.shape[0], _TO_FIRST_ROWS):
        for c in range(0, y.shape[2], _TO_FIRST_CHANNELS):
            out[c:c + _TO_FIRST_CHANNELS, h:h + _TO_FIRST_ROWS].copy_(
                y[h:h + _TO_FIRST_ROWS, :, c:c + _TO_FIRST_CHANNELS].permute(2, 0, 1))


def _apply_b_t(d, out) -> None:
    """``out[i] = sum_k B^T[i, k] d[k]`` for six same-shape tensors (views) ``d`` into six
    same-shape tensors ``out``, with the rows' shared terms computed once. ``_B_T`` factored by
    hand: the tests compare every path with the direct convolution, so the two cannot drift."""
    torch.add(d[4], d[2], alpha=-4, out=out[1])  # d4 - 4 d2, the even part of rows 1 and 2
    odd = torch.add(d[3], d[1], alpha=-4)
    torch.sub(out[1], odd, out=out[2])
    out[1].add_(odd)
    even = torch.sub(d[4], d[2])  # rows 3 and 4: (d4 - d2) +- 2 (d3 - d1)
    odd = torch.sub(d[3], d[1]).mul_(2)
    torch.add(even, odd, out=out[3])
    torch.sub(even, odd, out=out[4])
    torch.add(d[4], d[2], alpha=-5, out=out[0]).add_(d[0], alpha=4)
    torch.add(d[5], d[3], alpha=-5, out=out[5]).add_(d[1], alpha=4)


def _add_b(g, out) -> None:
    """``out[k] += sum_i B^T[i, k] g[i]``, the adjoint of :func:`_apply_b_t`, in place into six
    same-shape views ``out`` (each without overlap within itself)."""
    low_sum, low_diff = torch.add(g[1], g[2]), torch.sub(g[2], g[1])
    high_sum, high_diff = torch.add(g[3], g[4]), torch.sub(g[4], g[3])
    out[0].add_(g[0], alpha=4)
    out[1].add_(low_diff, alpha=4).add_(high_diff, alpha=2).add_(g[5], alpha=4)
    out[2].add_(g[0], alpha=-5).add_(low_sum, alpha=-4).sub_(high_sum)
    out[3].sub_(low_diff).add_(high_diff, alpha=-2).add_(g[5], alpha=-5)
    out[4].add_(g[0]).add_(low_sum).add_(high_sum)
    out[5].add_(g[5])


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _filter_transform(like: torch.Tensor) -> torch.Tensor:
    """kron(G, G) (36, 9): a flattened 3x3 filter -> its 36 transformed values."""
    g = _matrix(_G, like)
    return torch.kron(g, g)


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) filters -> (36, C, K): ``G g G^T`` for each (output, input) channel pair.

    One (36, 9) @ (9, K C) product (``G g G^T`` flattened is ``kron(G, G) @ vec(g)``); the result
    is a transposed view, which the matrix products read as it is."""
    u = _filter_transform(weight) @ weight.reshape(-1, 9).t()  # (36, K C)
    return u.view(-1, weight.shape[0], weight.shape[1]).transpose(1, 2)


class _Tiling:
    """Where the tiles of an (N, C, H, W) input with dilation ``d`` lie in its padded copy.

    The padded copy is channels-last (N, H', W', C): the convolution's zero padding ``d`` on each
    side, plus zeros up to whole tiles at the bottom and right. Tile (ry, t, rx, u), element
    (i, j), is padded pixel (ry + d (t m + i), rx + d (u m + j)); output pixel
    (ry + d (t m + i), ...) for i < m is the tile's output (i, j), so output rows are ordered
    (t, i, ry) and columns (u, j, rx)."""

    def __init__(self, shape: torch.Size, dilation: int, element_size: int) -> None:
        self.batch, self.channels, self.height, self.width = shape
        self.d = dilation
        step = dilation * OUTPUT_TILE
        self.tiles_y, self.tiles_x = math.ceil(self.height / step), math.ceil(self.width / step)
        self.out_h, self.out_w = self.tiles_y * step, self.tiles_x * step
        per_row = INPUT_TILE * INPUT_TILE * dilation * dilation * self.tiles_x * self.channels * element_size
        tiles_per_row = self.tiles_x * dilation * dilation
        self.rows_per_band = max(1, TRANSFORM_BUDGET_BYTES // per_row, math.ceil(MIN_BAND_TILES / tiles_per_row))
        self._buffers: Dict[int, torch.Tensor] = {}

    def pad(self, x: torch.Tensor, n: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Image ``n`` of (N, C, H, W) ``x`` -> its padded channels-last copy (H', W', C), contiguous,
        written into ``out`` (the previous image's copy) when given. Only the border is zeroed
        (filling the whole copy first cost as much as the copy)."""
        d, height, width = self.d, self.height, self.width
        padded = x.new_empty((self.out_h + 2 * d, self.out_w + 2 * d, self.channels)) if out is None else out
        _copy_to_channels_last(padded[d:d + height, d:d + width], x[n])
        padded[:d].zero_()
        padded[d + height:].zero_()
        padded[d:d + height, :d].zero_()
        padded[d:d + height, d + width:].zero_()
        return padded

    def bands(self):
        """(first tile row, tile rows) of each band of an image."""
        for row in range(0, self.tiles_y, self.rows_per_band):
            yield row, min(self.rows_per_band, self.tiles_y - row)

    def _workspace(self, index: int, like: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        """Scratch tensor ``index`` viewed as ``shape``, kept for the next band: fresh large
        buffers cost page faults (glibc maps them anew each time), as much as the arithmetic."""
        size = math.prod(shape)
        buffer = self._buffers.get(index)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[index] = like.new_empty(size)
        return buffer[:size].view(shape)

    def _tile_rows(self, padded: torch.Tensor, row: int, rows: int):
        """Six (rows, d, W', C) views of a band of ``padded``: row ``k`` of every tile in it."""
        d, m = self.d, OUTPUT_TILE
        band = padded[row * d * m:(row + rows) * d * m + 2 * d].unflatten(0, (m * rows + 2, d))  # (q, ry, W', C)
        return [band[k:k + m * rows:m] for k in range(INPUT_TILE)]

    def _tile_columns(self, by_rows: torch.Tensor):
        """Six (rows, d, tiles_x, d, C) views of one (rows, d, W', C) slice: column ``k`` of every tile."""
        m = OUTPUT_TILE
        columns = by_rows.unflatten(2, (m * self.tiles_x + 2, self.d))  # (rows, ry, p, rx, C)
        return [columns[:, :, k:k + m * self.tiles_x:m] for k in range(INPUT_TILE)]

    @staticmethod
    def _elements(grid: torch.Tensor, i: int):
        """Elements (i, 0..5) of a (6, 6, d, rows, d, tiles_x, C) grid, each as (rows, d, tiles_x, d, C)."""
        return [grid[i, j].permute(1, 0, 3, 2, 4) for j in range(INPUT_TILE)]

    def transform(self, padded: torch.Tensor, row: int, rows: int) -> torch.Tensor:
        """The band's transformed tiles ``B^T d B`` as a (36, tiles, C) tensor, element-major.

        Separable and elementwise: B^T along the tile rows of the band, then along the tile
        columns, writing each of the 36 elements' (tiles, C) slice in place. A (36, 36) matrix
        product over gathered tiles did the same arithmetic at a quarter of the speed: its
        operands are too thin for a matrix kernel."""
        d, a, channels = self.d, INPUT_TILE, self.channels
        by_rows = self._workspace(0, padded, (a, rows, d, padded.shape[1], channels))
        _apply_b_t(self._tile_rows(padded, row, rows), list(by_rows))
        out = self._workspace(1, padded, (a, a, d, rows, d, self.tiles_x, channels))
        for i in range(a):
            _apply_b_t(self._tile_columns(by_rows[i]), self._elements(out, i))
        return out.view(a * a, -1, channels)

    def add_transposed(self, padded: torch.Tensor, row: int, rows: int, values: torch.Tensor) -> None:
        """The adjoint of :meth:`transform`: add ``B v B^T`` of each tile's (36, tiles, C) ``values``
        into ``padded`` where the tile lies (neighbouring tiles overlap by two pixels)."""
        d, a = self.d, INPUT_TILE
        values = values.view(a, a, d, rows, d, self.tiles_x, -1)
        by_rows = self._workspace(0, padded, (a, rows, d, padded.shape[1], padded.shape[2])).zero_()
        for i in range(a):
            _add_b(self._elements(values, i), self._tile_columns(by_rows[i]))
        _add_b(list(by_rows), self._tile_rows(padded, row, rows))

    def band_rows(self, row: int, rows: int) -> slice:
        step = self.d * OUTPUT_TILE
        return slice(row * step, (row + rows) * step)

    def to_band(self, blocks: torch.Tensor, rows: int, out: torch.Tensor) -> None:
        """(16, tiles * K) output blocks -> the band's output rows, written into ``out``
        (rows m d, W', K), contiguous: one strided copy."""
        m, d = OUTPUT_TILE, self.d
        blocks = blocks.view(m, m, d, rows, d, self.tiles_x, -1)
        out.view(rows, m, d, self.tiles_x, m, d, -1).copy_(blocks.permute(3, 0, 2, 5, 1, 4, 6))

    def from_band(self, band: torch.Tensor, rows: int) -> torch.Tensor:
        """The adjoint of :meth:`to_band`: (rows m d, W', K) -> (16, tiles * K)."""
        m, d = OUTPUT_TILE, self.d
        band = band.reshape(rows, m, d, self.tiles_x, m, d, -1)
        return band.permute(1, 4, 2, 0, 5, 3, 6).reshape(m * m, -1)


def _like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) ``y``, a permuted view of an (N, H, W, K) tensor, in ``x``'s memory layout:
    channels-last stays so, anything else becomes contiguous (a direct convolution after this one
    then runs in the layout it was given)."""
    if memory_layout(x) == torch.channels_last:
        return y.contiguous(memory_format=torch.channels_last)
    out = y.new_empty(y.shape)
    for n in range(y.shape[0]):
        _copy_to_channels_first(out[n], y[n].permute(1, 2, 0))
    return out


def transform_matrices(like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lavin & Gray's B^T (6, 6) and A^T (4, 6) in ``like``'s dtype and device."""
    return _matrix(_B_T, like), _matrix(_A_T, like)


def _output_transform(like: torch.Tensor) -> torch.Tensor:
    """kron(A^T, A^T) (16, 36): a tile's 36 products -> its 4x4 outputs."""
    a_t = _matrix(_A_T, like)
    return torch.kron(a_t, a_t)


def _convolve(x: torch.Tensor, u: torch.Tensor, dilation: int, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, C, H, W) with transformed filters (36, C, K) and an optional (K,) bias -> (N, K, H, W) in
    ``x``'s layout. The bias is added to each band while it is in the caches."""
    tiling = _Tiling(x.shape, dilation, x.element_size())
    output_transform = _output_transform(u)
    out = x.new_empty((tiling.batch, tiling.out_h, tiling.out_w, u.shape[2]))
    padded = None
    for n in range(tiling.batch):
        padded = tiling.pad(x, n, out=padded)
        for row, rows in tiling.bands():
            # (36, tiles, K): the convolution's multiplications, into buffers kept for the next band
            transformed = tiling.transform(padded, row, rows)
            products = torch.bmm(transformed, u, out=tiling._workspace(2, x, (u.shape[0], transformed.shape[1],
                                                                               u.shape[2])))
            blocks = torch.mm(output_transform, products.view(u.shape[0], -1),
                              out=tiling._workspace(3, x, (output_transform.shape[0], products[0].numel())))
            band = out[n, tiling.band_rows(row, rows)]
            tiling.to_band(blocks, rows, out=band)
            if bias is not None:
                band.add_(bias)
    return _like_input(out[:, :tiling.height, :tiling.width].permute(0, 3, 1, 2), x)


@torch.library.custom_op("knet::winograd_convolution", mutates_args=())
def winograd_convolution(x: torch.Tensor, transformed_weight: torch.Tensor, dilation: int,
                         bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`_convolve` as one operator, for the calls without gradients. ``torch.compile`` sees
    it whole (its output's shape comes from the fake implementation below) and calls it as it is,
    instead of unrolling its loops over images and bands into the graph, which made Inductor's
    copies of the tiles slower than the eager path."""
    return _convolve(x, transformed_weight, dilation, bias)


@winograd_convolution.register_fake
def _(x: torch.Tensor, transformed_weight: torch.Tensor, dilation: int,
      bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return torch.empty((x.shape[0], transformed_weight.shape[2], x.shape[2], x.shape[3]), dtype=x.dtype,
                       device=x.device, memory_format=memory_layout(x))


# Tile elements (of 36) whose transformed filters and filter gradient the backward pass holds at a
# time: the whole (36, C, K) pair is 2 x 189 MB for the FCN head's 2560 -> 512 convolution, at the
# peak of a training step's memory; in sixths they are recomputed per band for little time.
_BACKWARD_ELEMENTS = INPUT_TILE


class _WinogradFunction(torch.autograd.Function):
    """Winograd convolution with a Winograd backward; keeps only the input and the filters. The
    backward recomputes the transformed input and works one image at a time, and on the filters
    a few tile elements at a time, so its own memory is about one image's padded input and
    gradient, a band's transformed data, the filter gradient and a sixth of the transformed
    filters and their gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return _convolve(x, transform_weight(weight), dilation)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        tiling = _Tiling(x.shape, ctx.dilation, x.element_size())
        d, height, width = tiling.d, tiling.height, tiling.width
        out_channels, in_channels = weight.shape[:2]
        filter_transform = _filter_transform(weight)  # (36, 9)
        filters = weight.reshape(-1, 9).t()  # (9, K C), a view
        output_transform = _output_transform(weight)
        grad_x = torch.empty_like(x)  # x's memory layout
        grad_filters = weight.new_zeros((9, out_channels * in_channels))
        # One image's buffers, reused for the next: a new one while the last is still referenced
        # would hold both at once, at the step's peak of memory.
        padded = tiling.pad(x, 0)
        grad_padded = torch.empty_like(padded)
        grad_full = grad_out.new_zeros((tiling.out_h, tiling.out_w, grad_out.shape[1]))
        for n in range(tiling.batch):
            if n:
                tiling.pad(x, n, out=padded)
            grad_padded.zero_()
            _copy_to_channels_last(grad_full[:height, :width], grad_out[n])
            for row, rows in tiling.bands():
                grad_blocks = tiling.from_band(grad_full[tiling.band_rows(row, rows)], rows)
                grad_products = (output_transform.t() @ grad_blocks).view(INPUT_TILE * INPUT_TILE, -1, out_channels)
                transformed = tiling.transform(padded, row, rows)
                grad_transformed = tiling._workspace(2, transformed, transformed.shape)
                for e in range(0, INPUT_TILE * INPUT_TILE, _BACKWARD_ELEMENTS):
                    part = slice(e, e + _BACKWARD_ELEMENTS)
                    u = (filter_transform[part] @ filters).view(-1, out_channels, in_channels)  # (E, K, C)
                    torch.bmm(grad_products[part], u, out=grad_transformed[part])
                    grad_u = torch.bmm(grad_products[part].transpose(1, 2), transformed[part])  # (E, K, C)
                    grad_filters.addmm_(filter_transform[part].t(), grad_u.view(grad_u.shape[0], -1))
                tiling.add_transposed(grad_padded, row, rows, grad_transformed)
            _copy_to_channels_first(grad_x[n], grad_padded[d:d + height, d:d + width])
        return grad_x, grad_filters.t().reshape(weight.shape), None


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, ungrouped, padding equal to its dilation) that computes
    with Winograd F(4x4, 3x3), forward and backward. Same parameters and state-dict keys as the
    convolution it replaces (:meth:`from_conv` shares them; :func:`remove_winograd` gives that
    convolution back). Input (N, C, H, W); output (N, K, H, W) in the input's memory layout
    (channels-last or contiguous). Without gradients it uses the transformed filters (36, C, K)
    that :meth:`freeze` stored, if any (an inference copy's, whose weight no longer changes), else
    transforms the weight on each call.

    Winograd runs only on the CPU, in the dtype the module was built for (``winograd_dtype``,
    float32), on a batched input, outside autocast; anywhere else (a model moved to CUDA, to
    float64 or half, to ``meta``, ...) :meth:`forward` is the direct convolution of ``nn.Conv2d``."""

    transformed_weight: Optional[torch.Tensor]
    winograd_dtype: torch.dtype = torch.float32

    @staticmethod
    def supports(conv: nn.Module) -> bool:
        return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.groups == 1 and conv.dilation[0] == conv.dilation[1]
                and conv.padding == conv.dilation and conv.padding_mode == "zeros")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "WinogradConv2d":
        if not cls.supports(conv):
            raise ValueError(f"WinogradConv2d takes a 3x3, stride-1, ungrouped convolution with "
                             f"padding equal to its dilation, not {conv}")
        new = cls(conv.in_channels, conv.out_channels, 3, padding=conv.padding, dilation=conv.dilation,
                  bias=conv.bias is not None, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new.register_buffer("transformed_weight", None, persistent=False)
        new.train(conv.training)
        new.winograd_dtype = conv.weight.dtype
        # The module it replaces, outside the module tree (no state-dict keys): remove_winograd puts it back.
        object.__setattr__(new, "_replaced_conv", conv)
        return new

    def freeze(self) -> None:
        """Store the transformed filters (computed in float64) for the calls without gradients;
        for a copy whose weight will not change again."""
        self.transformed_weight = transform_weight(self.weight.detach().double()).to(self.weight.dtype).contiguous()

    def runs_winograd(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` computes ``x`` with Winograd (else with the direct convolution)."""
        weight = self.weight
        return (x.device.type == "cpu" and weight.device.type == "cpu"
                and x.dtype == weight.dtype == self.winograd_dtype and x.dim() == 4 and x.numel() > 0
                and x.shape[1] == self.in_channels
                and not torch.is_autocast_enabled("cpu") and self.supports(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.runs_winograd(x):
            return self._conv_forward(x, self.weight, self.bias)
        dilation = self.dilation[0]
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad or
                                        (self.bias is not None and self.bias.requires_grad)):
            out = _WinogradFunction.apply(x, self.weight, dilation)
            return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)
        frozen = self.transformed_weight
        bias = None if self.bias is None else self.bias.detach()
        return winograd_convolution(x, transform_weight(self.weight.detach()) if frozen is None else frozen,
                                    dilation, bias)


def use_winograd(model: nn.Module, min_channels: int = 128, freeze: bool = False) -> int:
    """Replace, in place, every float32 ``nn.Conv2d`` that :class:`WinogradConv2d` supports and
    whose input and output widths are at least ``min_channels`` (narrower ones are faster
    direct), sharing its parameters; returns how many (:func:`remove_winograd` undoes it).
    ``freeze``: also store the transformed filters of every Winograd convolution in the model
    (:meth:`WinogradConv2d.freeze`), for an inference copy (``knet.models.fuse``); training on
    the CPU leaves it off."""
    replacements: Dict[int, WinogradConv2d] = {}  # a convolution shared by several parents stays shared
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (type(child) is nn.Conv2d and WinogradConv2d.supports(child) and child.weight.dtype == torch.float32
                    and min(child.in_channels, child.out_channels) >= min_channels):
                if id(child) not in replacements:
                    replacements[id(child)] = WinogradConv2d.from_conv(child)
                setattr(module, name, replacements[id(child)])
    replaced = len(replacements)
    if freeze:
        for module in model.modules():
            if isinstance(module, WinogradConv2d):
                module.freeze()
    return replaced


def remove_winograd(model: nn.Module) -> int:
    """Undo :func:`use_winograd` in place: every :class:`WinogradConv2d` of ``model`` becomes a plain
    ``nn.Conv2d`` again (the module it replaced, when there is one, else a new one) holding the
    same Parameter objects, in the same train/eval mode; the state-dict keys do not change.
    Returns how many were replaced."""
    restored: Dict[int, nn.Conv2d] = {}  # a module shared by several parents stays shared
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, WinogradConv2d):
                continue
            conv = restored.get(id(child))
            if conv is None:
                conv = child.__dict__.get("_replaced_conv")
                if type(conv) is not nn.Conv2d:
                    conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                     padding=child.padding, dilation=child.dilation, groups=child.groups,
                                     bias=child.bias is not None, padding_mode=child.padding_mode, device="meta")
                # the parameters as they are now (moved, converted or loaded with assign=True since)
                conv.weight, conv.bias = child.weight, child.bias
                conv.train(child.training)
                restored[id(child)] = conv
            setattr(module, name, conv)
    return len(restored)


__all__ = ["INPUT_TILE", "OUTPUT_TILE", "WinogradConv2d", "remove_winograd", "transform_matrices", "transform_weight",
           "use_winograd"]
