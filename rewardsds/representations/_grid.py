"""Multi-resolution grid encodings in plain PyTorch (no tiny-cuda-nn).

Three encodings of points in the unit cube [0, 1]^3 share one interface (``forward(x) -> [N, L * F]``):

- :class:`HashGridEncoding`: Instant-NGP's multi-resolution hash grid (Mueller et al. 2022, Sec. 3):
  per level a table of ``F``-dim features, trilinear interpolation of the 8 cell corners, corners
  indexed densely while the level fits the table and by the spatial hash
  ``(x * 1) xor (y * 2654435761) xor (z * 805459861) mod T`` above. Two backends compute it: Triton
  kernels (:mod:`rewardsds.representations._hash_triton`: forward, backward and double backward, no
  per-corner intermediates) for CUDA tensors, and this module's PyTorch version, which gathers all levels
  in one ``index_select`` on one flat table (int32 arithmetic: the table size is a power of two, so the
  low bits of the wrapped products equal tcnn's uint32 ones). The PyTorch version runs on the CPU and
  is the reference the kernels are tested against.
- :class:`DenseGridEncoding`: one dense 3D feature volume per level, sampled with ``grid_sample``.
- :class:`TriplaneEncoding`: three axis-aligned feature planes per level, sampled with ``grid_sample``
  and summed (EG3D-style).

Analytic normals differentiate the density with respect to the points and then train through that
gradient, which needs the derivative of ``grid_sample``'s backward: CUDA has none. Points that carry a
gradient therefore take :func:`sample_planes` / :func:`sample_volume`, the same interpolation written with
gathers (differentiable to any order, equal to ``grid_sample`` to rounding); all other calls take
``grid_sample``.

Levels whose resolution exceeds ``max_resolution`` passed to ``forward`` are zeroed (coarse-to-fine
schedules), so their parameters get no gradient.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from rewardsds.errors import ConfigError
from rewardsds.representations.config import HashBackend
from rewardsds.schema import enum_option

# tcnn's primes; 2654435761 does not fit int32, so it is stored as its two's-complement wrap.
_PRIMES = (1, 2654435761 - (1 << 32), 805459861)


def level_resolutions(n_levels: int, base_resolution: int, per_level_scale: float) -> list[float]:
    """Grid scales per level, ``base * per_level_scale ** l`` (the finest is the level's cell count)."""
    return [base_resolution * per_level_scale**level for level in range(n_levels)]


class GridEncoding(nn.Module):
    """Base class: ``n_output_dims`` features per point, one resolution per level."""

    n_output_dims: int
    resolutions: list[float]
    n_features_per_level: int

    def level_mask(self, max_resolution: Optional[float], device: torch.device) -> Optional[Tensor]:
        """[L] 1/0 mask of levels at or below ``max_resolution`` (None = all levels)."""
        if max_resolution is None or max_resolution >= max(self.resolutions):
            return None
        m = torch.tensor([1.0 if r <= max_resolution + 1e-6 else 0.0 for r in self.resolutions], device=device)
        m[0] = 1.0  # the coarsest level always stays on
        return m

    def _apply_mask(self, feats: Float[Tensor, "n l f"], max_resolution: Optional[float]) -> Tensor:
        mask = self.level_mask(max_resolution, feats.device)
        if mask is not None:
            feats = feats * mask.view(1, -1, 1)
        return feats.reshape(feats.shape[0], -1)

    def _feature_grids(self, n_levels: int, n_features: int, base_resolution: int, per_level_scale: float, init_scale: float,
                       shape: Callable[[int], tuple[int, ...]]) -> nn.ParameterList:
        """Set the level bookkeeping and return one parameter of ``shape(r)`` per level (r = cells + 1 per side),
        uniform in [-init_scale, init_scale] (the dense and triplane encodings)."""
        self.n_features_per_level = n_features
        self.n_output_dims = n_levels * n_features
        self.resolutions = level_resolutions(n_levels, base_resolution, per_level_scale)
        return nn.ParameterList([nn.Parameter(torch.empty(*shape(int(round(s)) + 1)).uniform_(-init_scale, init_scale))
                                 for s in self.resolutions])


class HashGridEncoding(GridEncoding):
    """Instant-NGP multi-resolution hash grid with trilinear interpolation.

    Args:
        n_levels: number of resolution levels L.
        n_features_per_level: features per level F.
        log2_hashmap_size: log2 of the per-level table size T.
        base_resolution: coarsest grid scale.
        per_level_scale: growth factor between levels, >= 1 (1.447... gives 4096 at 16 levels from 16).
        init_scale: features start uniform in [-init_scale, init_scale] (tcnn: 1e-4).
        backend: ``auto`` (Triton kernels for CUDA tensors, PyTorch on the CPU), ``triton`` (CUDA tensors,
            or CPU tensors under ``TRITON_INTERPRET=1``) or ``torch`` (the PyTorch version everywhere).
    """

    def __init__(
        self,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        init_scale: float = 1e-4,
        backend: HashBackend | str = HashBackend.auto,
    ) -> None:
        super().__init__()
        backend = enum_option(HashBackend, backend, "representation.hash_backend")
        if per_level_scale < 1.0:
            # Coarse-to-fine masks then keep a prefix of the levels (what the kernels assume).
            raise ConfigError("representation.per_level_scale", per_level_scale, "must be >= 1", "use e.g. 1.447")
        self.backend = backend
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.n_output_dims = n_levels * n_features_per_level
        self.resolutions = level_resolutions(n_levels, base_resolution, per_level_scale)
        T = 1 << log2_hashmap_size
        sizes, offsets, dense, strides = [], [], [], []
        total = 0
        for scale in self.resolutions:
            # tcnn: pos = x * scale + 0.5, so corner coordinates lie in [0, ceil(scale) + 1].
            side = int(math.ceil(scale)) + 2
            is_dense = side**3 <= T
            size = side**3 if is_dense else T
            sizes.append(size)
            offsets.append(total)
            dense.append(is_dense)
            strides.append(side)
            total += size
        self.table_size = T
        self.n_dense_levels = sum(dense)
        if any(dense[self.n_dense_levels:]):  # pragma: no cover - resolutions grow with the level
            raise ValueError("dense levels must precede hashed levels")
        self.params = nn.Parameter(torch.empty(total, n_features_per_level).uniform_(-init_scale, init_scale))
        self.register_buffer("_scales", torch.tensor(self.resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("_offsets", torch.tensor(offsets, dtype=torch.int32), persistent=False)
        self.register_buffer("_dense", torch.tensor(dense, dtype=torch.bool), persistent=False)
        self.register_buffer("_strides", torch.tensor(strides, dtype=torch.int32), persistent=False)
        self.register_buffer("_primes", torch.tensor(_PRIMES, dtype=torch.int32), persistent=False)
        self._layouts: dict = {}

    def n_active_levels(self, max_resolution: Optional[float]) -> int:
        """How many levels (a prefix: resolutions grow with the level) ``max_resolution`` keeps on."""
        if max_resolution is None:
            return self.n_levels
        return max(1, sum(1 for r in self.resolutions if r <= max_resolution + 1e-6))

    def uses_triton(self, x: Tensor) -> bool:
        """Whether ``forward(x)`` runs the Triton kernels (see ``backend``)."""
        if self.backend is HashBackend.torch:
            return False
        if self.backend is HashBackend.auto:
            return x.is_cuda
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ConfigError("representation.hash_backend", "triton",
                              f"runs Triton kernels on CUDA tensors, but the points are on {x.device}",
                              "use representation.hash_backend=auto (Triton on CUDA, PyTorch on the CPU) or torch, or run on a GPU")
        return True

    def layout(self, device: torch.device):
        """The Triton kernels' view of this grid (cached per device)."""
        key = str(device)
        if self._layouts.get(key) is None:
            rows = self.params.shape[0]
            wide = rows * self.n_features_per_level >= 2**31
            self._layouts[key] = _triton_module().HashGridLayout(
                scales=self._scales.to(device, torch.float32),
                offsets=self._offsets.to(device, torch.int64 if wide else torch.int32),
                sides=self._strides.to(device), n_dense=self.n_dense_levels, table_size=self.table_size,
                n_levels=self.n_levels, n_features=self.n_features_per_level,
            )
        return self._layouts[key]

    def _apply(self, fn, recurse=True):
        self._layouts = {}  # .to() / .cuda() / .double() change the buffers: rebuild the layouts on next use
        return super()._apply(fn, recurse)

    def forward(self, x: Float[Tensor, "n 3"], max_resolution: Optional[float] = None,
                second_order: Optional[bool] = None) -> Float[Tensor, "n d"]:
        """Encode points in [0, 1]^3 (clamped) into [N, L * F] features (levels above ``max_resolution`` are zeros).

        Both backends are differentiable twice, so ``second_order`` changes nothing here."""
        if self.uses_triton(x):
            n_active = self.n_active_levels(max_resolution)
            return _triton_module().hash_grid_triton(x, self.params, self.layout(x.device), n_active)
        return self.forward_torch(x, max_resolution)

    def forward_torch(self, x: Float[Tensor, "n 3"], max_resolution: Optional[float] = None) -> Float[Tensor, "n d"]:
        """The PyTorch version of :meth:`forward` (gathers of all corners; the reference of the Triton kernels)."""
        n, L = x.shape[0], self.n_levels
        x = x.clamp(0.0, 1.0)
        pos = x[:, None, :] * self._scales.view(1, -1, 1) + 0.5  # [N, L, 3]
        grid = torch.floor(pos)
        frac = pos - grid  # [N, L, 3]
        # Per-axis terms for the lower (0) and upper (1) corner, [N, L, 3, 2]; the 8 corners are their
        # outer combination, so no [N, L, 8, 3] integer tensor is ever built. Corner c has axis-k bit
        # (c >> k) & 1, i.e. x varies fastest.
        g = grid.to(torch.int32)
        ax = torch.stack([g, g + 1], dim=-1)
        # Dense levels come first (resolution grows with the level), hashed ones after.
        kd = self.n_dense_levels
        parts = []
        if kd > 0:
            a = ax[:, :kd]
            stride = self._strides[:kd].view(1, kd, 1)
            sx, sy, sz = a[:, :, 0], a[:, :, 1] * stride, a[:, :, 2] * stride * stride  # [N, kd, 2]
            parts.append((sz[:, :, :, None, None] + sy[:, :, None, :, None] + sx[:, :, None, None, :]).reshape(n, kd, 8))
        if kd < L:
            a = ax[:, kd:]
            hx, hy, hz = a[:, :, 0] * self._primes[0], a[:, :, 1] * self._primes[1], a[:, :, 2] * self._primes[2]
            h = (hz[:, :, :, None, None] ^ hy[:, :, None, :, None] ^ hx[:, :, None, None, :]).reshape(n, L - kd, 8)
            parts.append(h & (self.table_size - 1))
        idx = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)) + self._offsets.view(1, L, 1)
        feats = self.params.index_select(0, idx.reshape(-1)).view(n, L, 8, self.n_features_per_level)
        wk = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
        w = (wk[:, :, 2, :, None, None] * wk[:, :, 1, None, :, None] * wk[:, :, 0, None, None, :]).reshape(n, L, 8)
        out = torch.einsum("nlc,nlcf->nlf", w, feats)  # [N, L, F]
        return self._apply_mask(out, max_resolution)


def _triton_module():
    """rewardsds.representations._hash_triton, imported on first use (Triton is only needed on CUDA)."""
    try:
        from rewardsds.representations import _hash_triton
    except ImportError as e:
        raise ConfigError("representation.hash_backend", "auto/triton", f"needs Triton for CUDA tensors ({e})",
                          "install triton (Linux wheels of torch bring it) or use representation.hash_backend=torch") from e
    return _hash_triton


def _second_order(x: Tensor, second_order: Optional[bool] = None) -> bool:
    """Whether to sample with the gather path, which is differentiable twice.

    Points that carry a gradient (analytic normals) need it when the normals' graph is differentiated again
    (training with an orientation loss). ``second_order=False`` says it will not be (evaluation renders):
    ``grid_sample`` and its fused first-order backward are then used, about 3x faster on the CPU, with equal
    values. ``None`` assumes the worst case whenever the points carry a gradient.
    """
    if not (x.requires_grad and torch.is_grad_enabled()):
        return False
    return True if second_order is None else bool(second_order)


def _corners(p: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Lower corner index (long) and fraction of coordinates in [-1, 1] (align_corners, border padding)."""
    u = ((p + 1.0) * (0.5 * (size - 1))).clamp(0.0, size - 1)
    i0 = u.detach().floor().clamp(max=size - 2).long()
    return i0, u - i0


def sample_planes(planes: Float[Tensor, "p c r r"], g: Float[Tensor, "p n 2"]) -> Float[Tensor, "p c n"]:
    """Bilinear samples of each plane at its points, as ``grid_sample(planes, g[:, :, None], "bilinear",
    padding_mode="border", align_corners=True)[..., 0]``; ``g[..., 0]`` indexes the width, ``g[..., 1]`` the
    height. Written with gathers, so it is differentiable to any order."""
    P, C, H, W = planes.shape
    (ix, fx), (iy, fy) = _corners(g[..., 0], W), _corners(g[..., 1], H)
    flat = planes.reshape(P, C, H * W)

    def at(dy: int, dx: int) -> Tensor:
        idx = ((iy + dy) * W + ix + dx)[:, None, :].expand(P, C, -1)
        return flat.gather(2, idx)

    fx, fy = fx[:, None, :], fy[:, None, :]
    return (at(0, 0) * (1 - fx) + at(0, 1) * fx) * (1 - fy) + (at(1, 0) * (1 - fx) + at(1, 1) * fx) * fy


def sample_volume(volume: Float[Tensor, "1 c d h w"], g: Float[Tensor, "n 3"]) -> Float[Tensor, "c n"]:
    """Trilinear samples as ``grid_sample(volume, g.view(1, -1, 1, 1, 3), "bilinear", padding_mode="border",
    align_corners=True)``; ``g[:, 0]`` indexes the width, ``g[:, 1]`` the height, ``g[:, 2]`` the depth.
    Written with gathers, so it is differentiable to any order."""
    _, C, D, H, W = volume.shape
    (ix, fx), (iy, fy), (iz, fz) = _corners(g[:, 0], W), _corners(g[:, 1], H), _corners(g[:, 2], D)
    flat = volume.reshape(C, D * H * W)
    out = 0.0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                idx = ((iz + dz) * H + iy + dy) * W + ix + dx
                w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * (fz if dz else 1 - fz)
                out = out + flat[:, idx] * w
    return out


class DenseGridEncoding(GridEncoding):
    """Multi-resolution dense feature volumes sampled trilinearly with ``grid_sample``.

    Args:
        n_levels, n_features_per_level, base_resolution, per_level_scale: as the hash grid (each level
            is a dense ``r^3`` volume, so keep the finest level at a few hundred cells).
        init_scale: features start uniform in [-init_scale, init_scale].
    """

    def __init__(
        self,
        n_levels: int = 8,
        n_features_per_level: int = 4,
        base_resolution: int = 16,
        per_level_scale: float = 1.4859,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.volumes = self._feature_grids(n_levels, n_features_per_level, base_resolution, per_level_scale, init_scale,
                                           lambda r: (1, n_features_per_level, r, r, r))

    def forward(self, x: Float[Tensor, "n 3"], max_resolution: Optional[float] = None,
                second_order: Optional[bool] = None) -> Float[Tensor, "n d"]:
        p = x.clamp(0.0, 1.0) * 2.0 - 1.0
        if _second_order(x, second_order):
            feats = [sample_volume(v, p).t() for v in self.volumes]
        else:
            g = p.view(1, -1, 1, 1, 3)
            feats = [
                F.grid_sample(v, g, mode="bilinear", padding_mode="border", align_corners=True).view(v.shape[1], -1).t()
                for v in self.volumes
            ]
        return self._apply_mask(torch.stack(feats, dim=1), max_resolution)


class TriplaneEncoding(GridEncoding):
    """Multi-resolution triplanes (xy, xz, yz feature planes summed) sampled with ``grid_sample``.

    Args:
        n_levels, n_features_per_level, base_resolution, per_level_scale: per-level plane sizes.
        init_scale: features start uniform in [-init_scale, init_scale].
    """

    def __init__(
        self,
        n_levels: int = 8,
        n_features_per_level: int = 4,
        base_resolution: int = 32,
        per_level_scale: float = 1.5,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.planes = self._feature_grids(n_levels, n_features_per_level, base_resolution, per_level_scale, init_scale,
                                          lambda r: (3, n_features_per_level, r, r))

    def forward(self, x: Float[Tensor, "n 3"], max_resolution: Optional[float] = None,
                second_order: Optional[bool] = None) -> Float[Tensor, "n d"]:
        p = x.clamp(0.0, 1.0) * 2.0 - 1.0
        g = torch.stack([p[:, [0, 1]], p[:, [0, 2]], p[:, [1, 2]]], dim=0)  # [3, N, 2]
        if _second_order(x, second_order):
            feats = [sample_planes(pl, g).sum(dim=0).t() for pl in self.planes]
        else:
            feats = [
                F.grid_sample(pl, g.unsqueeze(2), mode="bilinear", padding_mode="border", align_corners=True).sum(dim=0)[..., 0].t()
                for pl in self.planes
            ]
        return self._apply_mask(torch.stack(feats, dim=1), max_resolution)


def hash_grid_reference(enc: HashGridEncoding, x: Tensor) -> Tensor:
    """Plain per-level, per-corner loop version of :class:`HashGridEncoding` (for tests only)."""
    outs = []
    x = x.clamp(0.0, 1.0)
    for level, scale in enumerate(enc.resolutions):
        pos = x * scale + 0.5
        grid = torch.floor(pos)
        frac = pos - grid
        gi = grid.long()
        side = int(enc._strides[level])
        acc = torch.zeros(x.shape[0], enc.n_features_per_level, dtype=x.dtype)
        for c in range(8):
            bits = [(c >> k) & 1 for k in range(3)]
            cx, cy, cz = (gi[:, k] + bits[k] for k in range(3))
            if bool(enc._dense[level]):
                idx = cx + cy * side + cz * side * side
            else:
                idx = ((cx * 1) ^ (cy * 2654435761) ^ (cz * 805459861)) % enc.table_size
            w = torch.ones(x.shape[0], dtype=x.dtype)
            for k in range(3):
                w = w * (frac[:, k] if bits[k] else 1.0 - frac[:, k])
            acc = acc + w[:, None] * enc.params[int(enc._offsets[level]) + idx]
        outs.append(acc)
    return torch.cat(outs, dim=1)
