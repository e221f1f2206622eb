"""Triton kernels of the multi-resolution hash-grid encoding: forward, backward, double backward.

The encoding is the one of :class:`rewardsds.representations._grid.HashGridEncoding` (whose PyTorch
``forward`` is the reference these kernels are tested against): per level ``l`` with scale ``s_l``, a
point ``x`` in [0, 1]^3 has grid position ``p = x * s_l + 0.5``, lower corner ``g = floor(p)`` and
fraction ``f = p - g``; the output is ``y[l] = sum_c w_c(f) T[i_c]`` over the 8 cell corners ``c`` with
trilinear weights ``w_c`` and table rows ``i_c`` (dense index while the level fits the table, the spatial
hash ``x * 1 xor y * 2654435761 xor z * 805459861 mod T`` above, both in wrapping uint32 arithmetic).

Three kernels, each run as one program per block of ``block`` points and one level (``level_loop``
false: levels on the second grid axis, so the programs in flight share one level's table in L2) or per
block of points looping over the levels (``level_loop`` true: per-point sums over levels stay in
registers). One point per lane; features go in pairs, and an fp32 table (and fp32 output) with an even
feature count is read (written) as int64, so a corner's two features are one 8-byte access. Nothing of
size [N, 8, L, F] is ever materialised; the backward passes recompute corner indices and weights from the
saved points instead of storing them.

- ``_forward_kernel``: y [N, L*F] (levels above ``n_active`` written as zeros: coarse-to-fine masks).
- ``_backward_kernel``: dL/dT (fp32 atomics, relaxed) and/or dL/dx = sum_l s_l sum_c grad w_c <G, T[i_c]>.
- ``_double_backward_kernel``: the derivatives of that backward's outputs (dL/dT, dL/dx) with respect to
  its inputs (x, T, G), for analytic normals that enter the loss. With U = upstream gradient of dL/dx and
  V = upstream gradient of dL/dT, per point and level (a_c = s_l U . grad w_c):

      dG   = sum_c w_c V[i_c] + a_c T[i_c]
      dT  += a_c G                                                (atomics at i_c)
      dx_k = s_l sum_c d_k w_c <G, V[i_c]> + s_l^2 sum_c sum_j U_j d_j d_k w_c <G, T[i_c]>

  (trilinear weights have no d_k d_k term). Third derivatives are not supported.

Table gradients and run reduction. The backward passes scatter per point, level and corner into the
table with atomic additions. A NeRF's samples arrive ray by ray, so at the coarse levels tens of
consecutive points fall in the same cell and their atomics hit the same 8 rows one after another (the
additions to one address serialise in L2). With ``KernelConfig.reduce_runs`` (the default) each program
first marks, per level, the runs of consecutive points that share a cell (comparing each point's cell
with its neighbours'), sums every corner's contributions over each run with a segmented scan
(``tl.associative_scan``), and issues one atomic per run and corner from the run's last point. Blocks
where fewer than one point in eight continues a run (the fine levels: cells smaller than the sample
spacing) keep the plain per-point atomics. The sums are the same; only their order (and so their fp32
rounding) changes.

Arithmetic is fp32 whatever the storage dtype (points and tables may be fp32, fp16 or bf16), with
floating-point contraction disabled (``enable_fp_fusion=False``) so that ``x * s + 0.5`` rounds exactly
as the PyTorch reference's two operations do and both pick the same cells. Table gradients accumulate
in an fp32 buffer (cast to the table's dtype at the end); the order of the atomic additions is not fixed,
so table gradients are reproducible to fp32 rounding, not bitwise.

Set ``TRITON_INTERPRET=1`` before importing this module to run the kernels on CPU tensors with numpy
(the CPU tests do this in a subprocess).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor



@dataclass
class KernelConfig:
    """Launch shape of one kernel.

    Attributes:
        block: points per program (a power of two).
        num_warps: warps per program.
        level_loop: one program loops over all levels (true) or levels are the second grid axis (false).
        reduce_runs: table-gradient scatters sum runs of points in the same cell before their atomics (module
            docstring); false: one atomic per point, level and corner (the plain version, kept for comparison).
    """

    block: int = 256
    num_warps: int = 4
    level_loop: bool = False
    reduce_runs: bool = True


# Launch shapes per kernel. scripts/bench_grid_encoding.py (section "sweep") times the alternatives on the
# device and prints the fastest; edit these defaults to its choice.
# "backward" computes the table gradient (and the points' one when also needed), "backward_x" the points'
# gradient alone (the first pass of analytic normals).
KERNEL_CONFIGS: dict[str, KernelConfig] = {
    "forward": KernelConfig(block=256, num_warps=4, level_loop=False),
    "backward": KernelConfig(block=256, num_warps=4, level_loop=False),
    "backward_x": KernelConfig(block=256, num_warps=4, level_loop=True),
    "double_backward": KernelConfig(block=128, num_warps=4, level_loop=False),
}


def sweep_configs(kind: Optional[str] = None) -> list[KernelConfig]:
    """The launch shapes scripts/bench_grid_encoding.py times for kernel ``kind`` (None: for any kernel;
    tests/test_hash_grid_gpu.py checks each): block sizes, warps, levels on the grid or looped, and for the
    kernels with table scatters also the plain per-point atomics at the default shapes."""
    shapes = ((64, 2), (128, 4), (256, 4), (256, 8), (512, 8))  # one or two points per lane
    configs = [KernelConfig(block, warps, loop) for loop in (False, True) for block, warps in shapes]
    if kind in (None, "backward", "double_backward"):
        configs += [KernelConfig(block, 4, False, reduce_runs=False) for block in (128, 256)]
    return configs


@dataclass
class HashGridLayout:
    """What the kernels need to know about one hash grid (all levels in one flat table).

    Attributes:
        scales: [L] fp32 level scales (the same fp32 values the PyTorch reference multiplies by).
        offsets: [L] first table row of each level (int32, or int64 when rows * features >= 2^31).
        sides: [L] int32 dense side (cells + 2) of each level (used by the dense levels).
        n_dense: the first ``n_dense`` levels are indexed densely, the rest hashed.
        table_size: rows per hashed level T (a power of two).
        n_levels: L.
        n_features: F.
    """

    scales: Tensor
    offsets: Tensor
    sides: Tensor
    n_dense: int
    table_size: int
    n_levels: int
    n_features: int


# ----------------------------------------------------------------------------------------- device code
# Every tensor is 1D over a block of points (one point per lane): features are handled in pairs by
# separate scalar operations, because [points, features] tiles make Triton spread one point's features
# over two lanes and shuffle every per-point value through shared memory.
@triton.jit
def _load_points(x_ptr, rows, rmask, stride_xn, stride_xd):
    """The three coordinates of a block of points, in fp32 and clamped to [0, 1] (NaN becomes 0 or 1, so
    every corner index stays inside its level)."""
    base = x_ptr + rows * stride_xn
    x0 = tl.load(base, mask=rmask, other=0.0).to(tl.float32)
    x1 = tl.load(base + stride_xd, mask=rmask, other=0.0).to(tl.float32)
    x2 = tl.load(base + 2 * stride_xd, mask=rmask, other=0.0).to(tl.float32)
    x0 = tl.minimum(tl.maximum(x0, 0.0), 1.0)
    x1 = tl.minimum(tl.maximum(x1, 0.0), 1.0)
    x2 = tl.minimum(tl.maximum(x2, 0.0), 1.0)
    return x0, x1, x2


@triton.jit
def _cell(x, scale):
    """Lower corner (int32) and fraction of a coordinate at one level: p = x * scale + 0.5."""
    p = x * scale + 0.5
    g = tl.floor(p)
    return g.to(tl.int32), p - g


@triton.jit
def _corner_row(g0, g1, g2, C: tl.constexpr, side, dense, hash_mask, offset):
    """Table row of corner C (bit k of C = upper corner along axis k) of the cells at (g0, g1, g2)."""
    c0 = g0 + (C & 1)
    c1 = g1 + ((C >> 1) & 1)
    c2 = g2 + ((C >> 2) & 1)
    dense_idx = c0 + c1 * side + c2 * (side * side)
    # tcnn's primes in wrapping uint32 arithmetic; the table size is a power of two, so "& (T - 1)" is "mod T".
    h = c0.to(tl.uint32) ^ (c1.to(tl.uint32) * 2654435761) ^ (c2.to(tl.uint32) * 805459861)
    hash_idx = (h & hash_mask).to(tl.int32)
    return offset + tl.where(dense, dense_idx, hash_idx)


@triton.jit
def _corner_weights(f0, f1, f2, C: tl.constexpr):
    """Per-axis factors (w0, w1, w2) of corner C's trilinear weight and their signs d w_k / d f_k."""
    if (C & 1) == 1:
        w0 = f0
        s0 = 1.0
    else:
        w0 = 1.0 - f0
        s0 = -1.0
    if ((C >> 1) & 1) == 1:
        w1 = f1
        s1 = 1.0
    else:
        w1 = 1.0 - f1
        s1 = -1.0
    if ((C >> 2) & 1) == 1:
        w2 = f2
        s2 = 1.0
    else:
        w2 = 1.0 - f2
        s2 = -1.0
    return w0, w1, w2, s0, s1, s2


@triton.jit
def _load_pair(ptr, row, m, F: tl.constexpr, FB: tl.constexpr, PACKED: tl.constexpr):
    """Features FB and FB + 1 of table rows in fp32 (the second is 0 when FB + 1 == F). PACKED: ``ptr`` is an
    fp32 table viewed as int64, so that the two features come in one 8-byte load."""
    if PACKED:
        v = tl.load(ptr + row * (F // 2) + FB // 2, mask=m, other=0)
        a = v.to(tl.int32).to(tl.float32, bitcast=True)  # little-endian: feature FB in the low half
        b = (v >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    else:
        a = tl.load(ptr + row * F + FB, mask=m, other=0.0).to(tl.float32)
        if FB + 1 < F:
            b = tl.load(ptr + row * F + FB + 1, mask=m, other=0.0).to(tl.float32)
        else:
            b = tl.zeros_like(a)
    return a, b


@triton.jit
def _load_grad_pair(g_ptr, rows, m, level, stride_gn, stride_gd, F: tl.constexpr, FB: tl.constexpr):
    """Gradient of the encoding at features FB, FB + 1 of ``level`` (the second 0 past the last feature)."""
    base = g_ptr + rows * stride_gn + (level * F + FB) * stride_gd
    a = tl.load(base, mask=m, other=0.0).to(tl.float32)
    if FB + 1 < F:
        b = tl.load(base + stride_gd, mask=m, other=0.0).to(tl.float32)
    else:
        b = tl.zeros_like(a)
    return a, b


@triton.jit
def _store_pair(ptr, rows, m, level, stride_n, a, b, F: tl.constexpr, FB: tl.constexpr, PACKED: tl.constexpr):
    """Store features FB, FB + 1 of ``level``; PACKED: ``ptr`` is an fp32 [N, L * F] (F even) viewed as int64 with
    row stride ``stride_n`` in int64 elements, so that the pair is one 8-byte store."""
    if PACKED:
        lo = a.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
        hi = b.to(tl.int32, bitcast=True).to(tl.int64) << 32
        tl.store(ptr + rows * stride_n + (level * F + FB) // 2, hi | lo, mask=m)
    else:
        base = ptr + rows * stride_n + level * F + FB
        tl.store(base, a.to(ptr.dtype.element_ty), mask=m)
        if FB + 1 < F:
            tl.store(base + 1, b.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _add_pair(ptr, row, m, a, b, F: tl.constexpr, FB: tl.constexpr):
    """Atomic fp32 additions of (a, b) to features FB, FB + 1 of table rows."""
    tl.atomic_add(ptr + row * F + FB, a, mask=m, sem="relaxed")
    if FB + 1 < F:
        tl.atomic_add(ptr + row * F + FB + 1, b, mask=m, sem="relaxed")


@triton.jit
def _run_sum(f1, a1, b1, f2, a2, b2):
    """Combine of a segmented sum: f = 1 where a run starts, so the sums restart there (associative)."""
    return f1 | f2, tl.where(f2 != 0, a2, a1 + a2), tl.where(f2 != 0, b2, b1 + b2)


@triton.jit
def _same_cell(y0, y1, y2, g0, g1, g2, scale):
    """Whether points (y0, y1, y2) lie in the cells (g0, g1, g2) at this level (the cells' own arithmetic)."""
    h0, _ = _cell(y0, scale)
    h1, _ = _cell(y1, scale)
    h2, _ = _cell(y2, scale)
    return (h0 == g0) & (h1 == g1) & (h2 == g2)


@triton.jit
def _run_bounds(p0, p1, p2, n0, n1, n2, g0, g1, g2, scale, rows, rmask, N, BLOCK: tl.constexpr):
    """Runs of consecutive points in one cell at this level: (starts, ends, merge) with starts / ends int32 1 at
    a run's first / last point of the block (p*, n*: the previous and next points) and merge true when enough
    points continue a run for the segmented sums to beat per-point atomics (one point in eight)."""
    lane = tl.arange(0, BLOCK)
    starts = ((lane == 0) | ~_same_cell(p0, p1, p2, g0, g1, g2, scale)).to(tl.int32)
    ends = ((lane == BLOCK - 1) | (rows == N - 1) | ~_same_cell(n0, n1, n2, g0, g1, g2, scale)) & rmask
    n_runs = tl.sum(tl.where(rmask, starts, 0), axis=0)
    n_valid = tl.sum(rmask.to(tl.int32), axis=0)
    return starts, ends, n_runs * 8 <= n_valid * 7


@triton.jit
def _scatter_pair(dst_ptr, g0, g1, g2, f0, f1, f2, ga, gb, u0, u1, u2, scale, side, dense, hash_mask, offset,
                  emit, starts, F: tl.constexpr, FB: tl.constexpr, RUNS: tl.constexpr, DIRECTIONAL: tl.constexpr):
    """Atomic additions of c_k * (ga, gb) to features FB, FB + 1 of the 8 corner rows k of each point's cell, where
    c_k = w_k (the first backward: dL/dT) or, DIRECTIONAL, c_k = scale * sum_j u_j d_j w_k (the double backward's
    dT). RUNS: sum over runs (``starts``) first and add from the lanes in ``emit`` (the runs' last points)."""
    for C in tl.static_range(8):
        row = _corner_row(g0, g1, g2, C, side, dense, hash_mask, offset)
        w0, w1, w2, s0, s1, s2 = _corner_weights(f0, f1, f2, C)
        if DIRECTIONAL:
            c = scale * (u0 * (s0 * (w2 * w1)) + u1 * (s1 * (w2 * w0)) + u2 * (s2 * (w1 * w0)))
        else:
            c = w2 * w1 * w0
        va = c * ga
        vb = c * gb
        if RUNS:
            _, va, vb = tl.associative_scan((starts, va, vb), 0, _run_sum)
        _add_pair(dst_ptr, row, emit, va, vb, F, FB)


@triton.jit
def _scatter_level(dst_ptr, g0, g1, g2, f0, f1, f2, ga, gb, u0, u1, u2, scale, side, dense, hash_mask, offset, rmask,
                   starts, ends, merge, F: tl.constexpr, FB: tl.constexpr, REDUCE: tl.constexpr, DIRECTIONAL: tl.constexpr):
    """:func:`_scatter_pair` with run sums where ``merge`` (REDUCE only), per-point atomics elsewhere."""
    if REDUCE:
        if merge:
            _scatter_pair(dst_ptr, g0, g1, g2, f0, f1, f2, ga, gb, u0, u1, u2, scale, side, dense, hash_mask, offset,
                          ends, starts, F, FB, True, DIRECTIONAL)
        else:
            _scatter_pair(dst_ptr, g0, g1, g2, f0, f1, f2, ga, gb, u0, u1, u2, scale, side, dense, hash_mask, offset,
                          rmask, starts, F, FB, False, DIRECTIONAL)
    else:
        _scatter_pair(dst_ptr, g0, g1, g2, f0, f1, f2, ga, gb, u0, u1, u2, scale, side, dense, hash_mask, offset,
                      rmask, starts, F, FB, False, DIRECTIONAL)


@triton.jit
def _level_range(n, LEVEL_LOOP: tl.constexpr):
    """The levels a program covers: all ``n`` (one program per block of points) or its grid row's one level."""
    if LEVEL_LOOP:
        lo = 0
        hi = n
    else:
        lo = tl.program_id(1)
        hi = lo + 1
    return lo, hi


@triton.jit
def _neighbour_points(x_ptr, rows, rmask, N, x0, x1, x2, stride_xn, stride_xd, LOAD: tl.constexpr):
    """The previous and next points along the point order (for the runs of points in one cell), or the point itself
    when run sums are off."""
    if LOAD:
        p0, p1, p2 = _load_points(x_ptr, rows - 1, rmask & (rows > 0), stride_xn, stride_xd)
        n0, n1, n2 = _load_points(x_ptr, rows + 1, (rows + 1) < N, stride_xn, stride_xd)
    else:
        p0, p1, p2, n0, n1, n2 = x0, x1, x2, x0, x1, x2
    return p0, p1, p2, n0, n1, n2


@triton.jit
def _write_point_grad(ptr, rows, rmask, d0, d1, d2, LEVEL_LOOP: tl.constexpr):
    """Store a per-point 3-vector (all levels in this program) or add this level's share atomically."""
    if LEVEL_LOOP:
        tl.store(ptr + rows * 3, d0, mask=rmask)
        tl.store(ptr + rows * 3 + 1, d1, mask=rmask)
        tl.store(ptr + rows * 3 + 2, d2, mask=rmask)
    else:
        tl.atomic_add(ptr + rows * 3, d0, mask=rmask, sem="relaxed")
        tl.atomic_add(ptr + rows * 3 + 1, d1, mask=rmask, sem="relaxed")
        tl.atomic_add(ptr + rows * 3 + 2, d2, mask=rmask, sem="relaxed")


@triton.jit
def _forward_kernel(
    x_ptr, table_ptr, out_ptr, scales_ptr, offsets_ptr, sides_ptr,
    N, n_dense, n_active, n_levels, hash_mask,
    stride_xn, stride_xd, stride_on,
    F: tl.constexpr, PACKED: tl.constexpr, PACKED_OUT: tl.constexpr, BLOCK: tl.constexpr, LEVEL_LOOP: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    rows = rows.to(tl.int64)
    x0, x1, x2 = _load_points(x_ptr, rows, rmask, stride_xn, stride_xd)
    lo, hi = _level_range(n_levels, LEVEL_LOOP)
    for level in range(lo, hi):
        scale = tl.load(scales_ptr + level)
        offset = tl.load(offsets_ptr + level)
        side = tl.load(sides_ptr + level)
        dense = level < n_dense
        lmask = rmask & (level < n_active)  # levels above the coarse-to-fine limit: no loads, zeros stored
        g0, f0 = _cell(x0, scale)
        g1, f1 = _cell(x1, scale)
        g2, f2 = _cell(x2, scale)
        for FB in tl.static_range(0, F, 2):
            acc_a = tl.zeros((BLOCK,), dtype=tl.float32)
            acc_b = tl.zeros((BLOCK,), dtype=tl.float32)
            for C in tl.static_range(8):
                row = _corner_row(g0, g1, g2, C, side, dense, hash_mask, offset)
                w0, w1, w2, s0, s1, s2 = _corner_weights(f0, f1, f2, C)
                w = w2 * w1 * w0
                a, b = _load_pair(table_ptr, row, lmask, F, FB, PACKED)
                acc_a += w * a
                acc_b += w * b
            _store_pair(out_ptr, rows, rmask, level, stride_on, acc_a, acc_b, F, FB, PACKED_OUT)


@triton.jit
def _backward_kernel(
    x_ptr, table_ptr, g_ptr, dtable_ptr, dx_ptr, scales_ptr, offsets_ptr, sides_ptr,
    N, n_dense, n_active, hash_mask,
    stride_xn, stride_xd, stride_gn, stride_gd,
    F: tl.constexpr, PACKED: tl.constexpr, BLOCK: tl.constexpr, LEVEL_LOOP: tl.constexpr,
    NEED_DT: tl.constexpr, NEED_DX: tl.constexpr, REDUCE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    rows = rows.to(tl.int64)
    x0, x1, x2 = _load_points(x_ptr, rows, rmask, stride_xn, stride_xd)
    # the neighbours along the point order, for the runs of points in one cell
    p0, p1, p2, n0, n1, n2 = _neighbour_points(x_ptr, rows, rmask, N, x0, x1, x2, stride_xn, stride_xd, NEED_DT and REDUCE)
    lo, hi = _level_range(n_active, LEVEL_LOOP)
    dx0 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx1 = tl.zeros((BLOCK,), dtype=tl.float32)
    dx2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for level in range(lo, hi):
        scale = tl.load(scales_ptr + level)
        offset = tl.load(offsets_ptr + level)
        side = tl.load(sides_ptr + level)
        dense = level < n_dense
        g0, f0 = _cell(x0, scale)
        g1, f1 = _cell(x1, scale)
        g2, f2 = _cell(x2, scale)
        if NEED_DT and REDUCE:
            starts, ends, merge = _run_bounds(p0, p1, p2, n0, n1, n2, g0, g1, g2, scale, rows, rmask, N, BLOCK)
        else:
            starts = rmask.to(tl.int32)
            ends = rmask
            merge = False
        l0 = tl.zeros((BLOCK,), dtype=tl.float32)
        l1 = tl.zeros((BLOCK,), dtype=tl.float32)
        l2 = tl.zeros((BLOCK,), dtype=tl.float32)
        for FB in tl.static_range(0, F, 2):
            ga, gb = _load_grad_pair(g_ptr, rows, rmask, level, stride_gn, stride_gd, F, FB)
            if NEED_DT:
                _scatter_level(dtable_ptr, g0, g1, g2, f0, f1, f2, ga, gb, f0, f1, f2, scale, side, dense, hash_mask,
                               offset, rmask, starts, ends, merge, F, FB, REDUCE, False)
            if NEED_DX:
                for C in tl.static_range(8):
                    row = _corner_row(g0, g1, g2, C, side, dense, hash_mask, offset)
                    w0, w1, w2, s0, s1, s2 = _corner_weights(f0, f1, f2, C)
                    a, b = _load_pair(table_ptr, row, rmask, F, FB, PACKED)
                    dot = ga * a + gb * b
                    l0 += s0 * (w2 * w1) * dot
                    l1 += s1 * (w2 * w0) * dot
                    l2 += s2 * (w1 * w0) * dot
        if NEED_DX:
            dx0 += scale * l0
            dx1 += scale * l1
            dx2 += scale * l2
    if NEED_DX:
        _write_point_grad(dx_ptr, rows, rmask, dx0, dx1, dx2, LEVEL_LOOP)


@triton.jit
def _double_backward_kernel(
    x_ptr, table_ptr, g_ptr, u_ptr, v_ptr, gg_ptr, gt_ptr, gx_ptr, scales_ptr, offsets_ptr, sides_ptr,
    N, n_dense, n_active, hash_mask,
    stride_xn, stride_xd, stride_gn, stride_gd, stride_un, stride_ud, stride_ggn,
    F: tl.constexpr, PACKED: tl.constexpr, PACKED_OUT: tl.constexpr, BLOCK: tl.constexpr, LEVEL_LOOP: tl.constexpr,
    HAS_U: tl.constexpr, HAS_V: tl.constexpr, NEED_GG: tl.constexpr, NEED_GT: tl.constexpr, NEED_GX: tl.constexpr,
    REDUCE: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    rows = rows.to(tl.int64)
    x0, x1, x2 = _load_points(x_ptr, rows, rmask, stride_xn, stride_xd)
    p0, p1, p2, n0, n1, n2 = _neighbour_points(x_ptr, rows, rmask, N, x0, x1, x2, stride_xn, stride_xd, HAS_U and NEED_GT and REDUCE)
    if HAS_U:
        u0 = tl.load(u_ptr + rows * stride_un, mask=rmask, other=0.0).to(tl.float32)
        u1 = tl.load(u_ptr + rows * stride_un + stride_ud, mask=rmask, other=0.0).to(tl.float32)
        u2 = tl.load(u_ptr + rows * stride_un + 2 * stride_ud, mask=rmask, other=0.0).to(tl.float32)
    lo, hi = _level_range(n_active, LEVEL_LOOP)
    gx0 = tl.zeros((BLOCK,), dtype=tl.float32)
    gx1 = tl.zeros((BLOCK,), dtype=tl.float32)
    gx2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for level in range(lo, hi):
        scale = tl.load(scales_ptr + level)
        offset = tl.load(offsets_ptr + level)
        side = tl.load(sides_ptr + level)
        dense = level < n_dense
        g0, f0 = _cell(x0, scale)
        g1, f1 = _cell(x1, scale)
        g2, f2 = _cell(x2, scale)
        if HAS_U and NEED_GT and REDUCE:
            starts, ends, merge = _run_bounds(p0, p1, p2, n0, n1, n2, g0, g1, g2, scale, rows, rmask, N, BLOCK)
        else:
            starts = rmask.to(tl.int32)
            ends = rmask
            merge = False
        l0 = tl.zeros((BLOCK,), dtype=tl.float32)  # first-order terms of dx (times scale)
        l1 = tl.zeros((BLOCK,), dtype=tl.float32)
        l2 = tl.zeros((BLOCK,), dtype=tl.float32)
        h0 = tl.zeros((BLOCK,), dtype=tl.float32)  # Hessian terms of dx (times scale^2)
        h1 = tl.zeros((BLOCK,), dtype=tl.float32)
        h2 = tl.zeros((BLOCK,), dtype=tl.float32)
        for FB in tl.static_range(0, F, 2):
            ga, gb = _load_grad_pair(g_ptr, rows, rmask, level, stride_gn, stride_gd, F, FB)
            acc_a = tl.zeros((BLOCK,), dtype=tl.float32)
            acc_b = tl.zeros((BLOCK,), dtype=tl.float32)
            for C in tl.static_range(8):
                row = _corner_row(g0, g1, g2, C, side, dense, hash_mask, offset)
                w0, w1, w2, s0, s1, s2 = _corner_weights(f0, f1, f2, C)
                d0 = s0 * (w2 * w1)
                d1 = s1 * (w2 * w0)
                d2 = s2 * (w1 * w0)
                if HAS_V:
                    va, vb = _load_pair(v_ptr, row, rmask, F, FB, False)
                    if NEED_GG:
                        w = w2 * w1 * w0
                        acc_a += w * va
                        acc_b += w * vb
                    if NEED_GX:
                        dv = ga * va + gb * vb
                        l0 += d0 * dv
                        l1 += d1 * dv
                        l2 += d2 * dv
                if HAS_U:
                    a_c = scale * (u0 * d0 + u1 * d1 + u2 * d2)
                    if NEED_GG or NEED_GX:
                        ta, tb = _load_pair(table_ptr, row, rmask, F, FB, PACKED)
                        if NEED_GG:
                            acc_a += a_c * ta
                            acc_b += a_c * tb
                        if NEED_GX:
                            dt = ga * ta + gb * tb
                            # d_j d_k w for j != k: the sign product times the third axis factor.
                            e01 = (s0 * s1) * w2
                            e02 = (s0 * s2) * w1
                            e12 = (s1 * s2) * w0
                            h0 += (u1 * e01 + u2 * e02) * dt
                            h1 += (u0 * e01 + u2 * e12) * dt
                            h2 += (u0 * e02 + u1 * e12) * dt
            if NEED_GG:
                _store_pair(gg_ptr, rows, rmask, level, stride_ggn, acc_a, acc_b, F, FB, PACKED_OUT)
            if HAS_U and NEED_GT:
                _scatter_level(gt_ptr, g0, g1, g2, f0, f1, f2, ga, gb, u0, u1, u2, scale, side, dense, hash_mask, offset,
                               rmask, starts, ends, merge, F, FB, REDUCE, True)
        if NEED_GX:
            gx0 += scale * (l0 + scale * h0)
            gx1 += scale * (l1 + scale * h1)
            gx2 += scale * (l2 + scale * h2)
    if NEED_GX:
        _write_point_grad(gx_ptr, rows, rmask, gx0, gx1, gx2, LEVEL_LOOP)


# ----------------------------------------------------------------------------------------- launchers
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _launch(kernel, kind: str, n: int, n_levels: int, args: tuple, **constexprs) -> None:
    cfg = KERNEL_CONFIGS[kind]
    if "REDUCE" in constexprs:  # the scatters reduce runs only where the launch asks for it and the shape allows it
        constexprs["REDUCE"] = constexprs["REDUCE"] and cfg.reduce_runs
    grid = (triton.cdiv(n, cfg.block), 1 if cfg.level_loop else n_levels)
    kernel[grid](*args, BLOCK=cfg.block, LEVEL_LOOP=cfg.level_loop, num_warps=cfg.num_warps, enable_fp_fusion=False,
                 **constexprs)


def _table_arg(table: Tensor) -> tuple[Tensor, bool]:
    """The table as the kernels read it: an fp32 table with an even feature count viewed as int64 (two
    features per 8-byte load), anything else as it is."""
    if table.dtype == torch.float32 and table.shape[1] % 2 == 0:
        return table.view(torch.int64), True
    return table, False


def _out_arg(out: Tensor, n_features: int) -> tuple[Tensor, int, bool]:
    """An [N, L * F] output as the kernels write it: (tensor, row stride in its elements, packed). fp32 with an
    even F is viewed as int64 (one 8-byte store per feature pair)."""
    if out.dtype == torch.float32 and n_features % 2 == 0 and out.is_contiguous():
        return out.view(torch.int64), out.stride(0) // 2, True
    return out, out.stride(0), False


def _device_guard(t: Tensor):
    """Launch on the tensors' device (Triton launches on the current one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def hash_forward(x: Tensor, table: Tensor, layout: HashGridLayout, n_active: int) -> Tensor:
    """Encode points with the Triton forward kernel (no autograd).

    Args:
        x: [N, 3] points (clamped to [0, 1] inside the kernel), fp32/fp16/bf16.
        table: [rows, F] the flat feature table of all levels, fp32/fp16/bf16.
        layout: the grid's level bookkeeping.
        n_active: levels 0 .. n_active - 1 are encoded, the others are zeros.

    Returns:
        [N, L * F] features in the table's dtype.
    """
    n, L, F = x.shape[0], layout.n_levels, layout.n_features
    out = torch.empty(n, L * F, device=x.device, dtype=table.dtype)
    if n == 0:
        return out
    tab, packed = _table_arg(table)
    dst, stride_on, packed_out = _out_arg(out, F)
    with _device_guard(x):
        _launch(_forward_kernel, "forward", n, L, (
            x, tab, dst, layout.scales, layout.offsets, layout.sides,
            n, layout.n_dense, n_active, L, layout.table_size - 1,
            x.stride(0), x.stride(1), stride_on,
        ), F=F, PACKED=packed, PACKED_OUT=packed_out)
    return out


def hash_backward(x: Tensor, table: Tensor, grad: Tensor, layout: HashGridLayout, n_active: int, need_x: bool,
                  need_table: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Gradients of ``sum(grad * y)`` with respect to the points and the table (no autograd).

    Args:
        x: [N, 3] the encoded points.
        table: [rows, F] the feature table.
        grad: [N, L * F] gradient of the loss with respect to the encoding (any strides).
        layout, n_active: as :func:`hash_forward`.
        need_x, need_table: which gradients to compute.

    Returns:
        (dx [N, 3] in x's dtype or None, dtable [rows, F] in the table's dtype or None).
    """
    n, F = x.shape[0], layout.n_features
    dtable = torch.zeros(table.shape, device=table.device, dtype=torch.float32) if need_table else None
    dx = torch.zeros(n, 3, device=x.device, dtype=torch.float32) if need_x else None
    if n > 0 and (need_x or need_table) and n_active > 0:
        tab, packed = _table_arg(table)
        with _device_guard(x):
            _launch(_backward_kernel, "backward" if need_table else "backward_x", n, n_active, (
                x, tab, grad, dtable if need_table else table, dx if need_x else x,
                layout.scales, layout.offsets, layout.sides,
                n, layout.n_dense, n_active, layout.table_size - 1,
                x.stride(0), x.stride(1), grad.stride(0), grad.stride(1),
            ), F=F, PACKED=packed, NEED_DT=need_table, NEED_DX=need_x, REDUCE=need_table)
    if dtable is not None and dtable.dtype != table.dtype:
        dtable = dtable.to(table.dtype)
    if dx is not None and dx.dtype != x.dtype:
        dx = dx.to(x.dtype)
    return dx, dtable


def hash_double_backward(x: Tensor, table: Tensor, grad: Tensor, u: Optional[Tensor], v: Optional[Tensor],
                         layout: HashGridLayout, n_active: int, need_x: bool, need_table: bool,
                         need_grad: bool) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Derivatives of :func:`hash_backward`'s outputs (upstream gradients ``u`` for dx, ``v`` for dtable).

    Args:
        x, table, grad, layout, n_active: the inputs of the backward being differentiated.
        u: [N, 3] gradient with respect to dx, or None (zero).
        v: [rows, F] gradient with respect to dtable, or None (zero).
        need_x, need_table, need_grad: which derivatives to return.

    Returns:
        (d/dx [N, 3], d/dtable [rows, F], d/dgrad [N, L * F]), each None when not needed.
    """
    n, L, F = x.shape[0], layout.n_levels, layout.n_features
    has_u, has_v = u is not None, v is not None
    need_table = need_table and has_u  # the backward's outputs depend on the table through dx only
    gx = torch.zeros(n, 3, device=x.device, dtype=torch.float32) if need_x else None
    gt = torch.zeros(table.shape, device=table.device, dtype=torch.float32) if need_table else None
    gg = None
    if need_grad:
        make = torch.zeros if n_active < L or not (has_u or has_v) else torch.empty
        gg = make(n, L * F, device=grad.device, dtype=grad.dtype)
    if v is not None:
        v = v.contiguous()
    if n > 0 and n_active > 0 and (has_u or has_v) and (need_x or need_table or need_grad):
        tab, packed = _table_arg(table)
        dst, stride_ggn, packed_out = _out_arg(gg, F) if need_grad else (grad, 0, False)
        with _device_guard(x):
            _launch(_double_backward_kernel, "double_backward", n, n_active, (
                x, tab, grad, u if has_u else x, v if has_v else table, dst,
                gt if need_table else table, gx if need_x else x,
                layout.scales, layout.offsets, layout.sides,
                n, layout.n_dense, n_active, layout.table_size - 1,
                x.stride(0), x.stride(1), grad.stride(0), grad.stride(1),
                u.stride(0) if has_u else 0, u.stride(1) if has_u else 0, stride_ggn,
            ), F=F, PACKED=packed, PACKED_OUT=packed_out, HAS_U=has_u, HAS_V=has_v, NEED_GG=need_grad, NEED_GT=need_table,
            NEED_GX=need_x, REDUCE=has_u and need_table)
    if gt is not None and gt.dtype != table.dtype:
        gt = gt.to(table.dtype)
    if gx is not None and gx.dtype != x.dtype:
        gx = gx.to(x.dtype)
    return gx, gt, gg


# ----------------------------------------------------------------------------------------- autograd
def _reaches_only_released_leaves(node, budget: int = 32) -> bool:
    """Whether every path from autograd ``node`` ends in leaves that no longer require grad (their AccumulateGrad
    drops what arrives). Analytic normals differentiate with respect to a leaf copy of the points and then
    release it (``requires_grad_(False)``): the loss's backward must still run through the encoding for the
    table, but the points' gradient would be computed only to be dropped. Conservative: a node the engine will
    not execute (a captured ``inputs=`` edge of ``autograd.grad``), a leaf that requires grad, a node without
    inputs, or more than ``budget`` nodes mean the gradient is used. (Hooks on tensors between the points and
    the released leaf are not seen: they then receive no gradient.)"""
    stack, seen = [node], 0
    while stack:
        n = stack.pop()
        seen += 1
        if seen > budget:
            return False
        if type(n).__name__ == "AccumulateGrad":  # a leaf's
            if n.variable.requires_grad:
                return False
            continue
        if not torch._C._will_engine_execute_node(n):
            return False
        nexts = [m for m, _ in n.next_functions if m is not None]
        if not nexts:
            return False
        stack.extend(nexts)
    return True


def _gradient_will_be_used(t: Tensor) -> bool:
    """Whether the running backward pass will use a gradient for ``t``.

    ``ctx.needs_input_grad`` says only whether ``t`` requires grad; ``torch.autograd.grad(y, x)`` on analytic
    normals needs dL/dx but not dL/dtable, and then the table's atomic scatter is skipped; the loss's backward
    after it needs dL/dtable but not dL/dx when the points' leaf was released
    (:func:`_reaches_only_released_leaves`). The engine knows which nodes it will run; where it cannot answer
    (outside an engine pass, or ``t`` is itself an ``inputs=`` leaf of ``autograd.grad``) the gradient is
    computed.
    """
    try:
        node = torch.autograd.graph.get_gradient_edge(t).node
        if not torch._C._will_engine_execute_node(node):
            return False
        return not _reaches_only_released_leaves(node)
    except (RuntimeError, AttributeError):
        return True


class HashGridFunction(torch.autograd.Function):
    """y = encode(x, table) with the Triton kernels; differentiable twice (in x, the table and y's gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, layout: HashGridLayout, n_active: int) -> Tensor:
        ctx.save_for_backward(x, table)
        ctx.layout, ctx.n_active = layout, n_active
        return hash_forward(x, table, layout, n_active)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, table = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0] and _gradient_will_be_used(x)
        need_table = ctx.needs_input_grad[1] and _gradient_will_be_used(table)
        if not (need_x or need_table):
            return None, None, None, None
        dx, dtable = HashGridBackwardFunction.apply(x, table, grad, ctx.layout, ctx.n_active, need_x, need_table)
        return dx, dtable, None, None


class HashGridBackwardFunction(torch.autograd.Function):
    """(dx, dtable) = backward of :class:`HashGridFunction`; its own backward is the double-backward kernel."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, grad: Tensor, layout: HashGridLayout, n_active: int, need_x: bool,
                need_table: bool):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, table, grad)
        ctx.layout, ctx.n_active = layout, n_active
        return hash_backward(x, table, grad, layout, n_active, need_x, need_table)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, u: Optional[Tensor], v: Optional[Tensor]):
        x, table, grad = ctx.saved_tensors
        need_x, need_table, need_grad = ctx.needs_input_grad[:3]
        need_x = need_x and _gradient_will_be_used(x)  # not for released points (analytic normals)
        gx, gt, gg = hash_double_backward(x, table, grad, u, v, ctx.layout, ctx.n_active, need_x, need_table, need_grad)
        return gx, gt, gg, None, None, None, None


def hash_grid_triton(x: Tensor, table: Tensor, layout: HashGridLayout, n_active: int) -> Tensor:
    """Differentiable hash-grid encoding with the Triton kernels.

    Args:
        x: [N, 3] points in [0, 1]^3 (clamped; the gradient is zero outside, as ``torch.clamp``'s).
        table: [rows, F] the flat feature table.
        layout: the grid's level bookkeeping.
        n_active: levels 0 .. n_active - 1 are encoded; the others are zeros without gradient.

    Returns:
        [N, L * F] features in the table's dtype.
    """
    if x.dtype not in _FLOATS or table.dtype not in _FLOATS:
        from rewardsds.errors import ConfigError

        raise ConfigError("representation.hash_backend", "triton",
                          "supports float32, float16 and bfloat16 points and tables, "
                          f"got {x.dtype} points and a {table.dtype} table", "use representation.hash_backend=torch for other dtypes")
    if x.requires_grad and torch.is_grad_enabled():
        # torch's clamp gives the reference's gradient mask at and beyond the faces of the cube.
        x = x.clamp(0.0, 1.0)
    return HashGridFunction.apply(x, table.contiguous(), layout, n_active)
