"""A dense PyTorch 3D Gaussian rasteriser: the CPU path and the plain twin of ``gsplat.rasterization``.

It reproduces gsplat's "classic" pinhole pipeline (gsplat 1.5, ``ProjectionEWA3DGSFused.cu`` and
``RasterizeToPixels3DGSFwd.cu``) without tiles:

1. Projection (EWA splatting, Zwicker et al. 2002): camera-space covariance ``R S S^T R^T``, the
   perspective Jacobian at the mean (its x/z and y/z clamped to 1.3 times the half field of view, as
   gsplat), a 2D covariance dilated by ``eps2d = 0.3`` pixels^2, its inverse (the conic), and the
   opacity-aware screen radius ``ceil(min(3.33, sqrt(2 ln(opacity * 255))) * sqrt(cov_ii))``.
   Gaussians behind the near plane, beyond the far plane, with opacity below 1/255, no larger than
   ``radius_clip`` or entirely off-screen get radius 0 and do not render.
2. Compositing, per pixel centre ``(u + 0.5, v + 0.5)``, front to back in camera depth: ``alpha =
   min(0.999, o exp(-q/2))`` with ``q`` the conic's quadratic form; samples with ``q < 0`` or
   ``alpha < 1/255`` are skipped, and a pixel stops before the first Gaussian that would bring its
   transmittance to 1e-4 or below. Every visible Gaussian is evaluated at every pixel (chunked), so
   memory and time grow with pixels x Gaussians: this is for tests, small scenes and the CPU.

The info dict carries ``means2d`` (a non-leaf tensor of the graph: gsplat's strategies call
``retain_grad`` on it before the backward pass), ``radii``, ``width``, ``height`` and ``n_cameras`` in
gsplat's unpacked layout, which is what gsplat's densification strategies read.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
TRANSMITTANCE_STOP = 1e-4

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


def eval_sh(degree: int, coeffs: Float[Tensor, "*batch k 3"], dirs: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 3"]:
    """Colour from real spherical-harmonic coefficients (3DGS / gsplat basis order), degree <= 3.

    Args:
        degree: SH degree used (coefficients beyond ``(degree + 1)^2`` are ignored).
        coeffs: [..., K, 3] with K >= (degree + 1)^2.
        dirs: [..., 3] viewing directions (normalised here).

    Returns:
        [..., 3] the SH sum (gsplat then adds 0.5 and clamps at 0).
    """
    d = F.normalize(dirs, dim=-1)
    out = SH_C0 * coeffs[..., 0, :]
    if degree < 1:
        return out
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    out = out - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + SH_C2[0] * xy * coeffs[..., 4, :]
        + SH_C2[1] * yz * coeffs[..., 5, :]
        + SH_C2[2] * (2.0 * zz - xx - yy) * coeffs[..., 6, :]
        + SH_C2[3] * xz * coeffs[..., 7, :]
        + SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree < 3:
        return out
    return (
        out
        + SH_C3[0] * y * (3.0 * xx - yy) * coeffs[..., 9, :]
        + SH_C3[1] * xy * z * coeffs[..., 10, :]
        + SH_C3[2] * y * (4.0 * zz - xx - yy) * coeffs[..., 11, :]
        + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * coeffs[..., 12, :]
        + SH_C3[4] * x * (4.0 * zz - xx - yy) * coeffs[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + SH_C3[6] * x * (xx - 3.0 * yy) * coeffs[..., 15, :]
    )


def quat_to_rotmat(quats: Float[Tensor, "n 4"]) -> Float[Tensor, "n 3 3"]:
    """Rotation matrices from (w, x, y, z) quaternions (normalised here)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(-1, 3, 3)


def project_gaussians(
    means: Float[Tensor, "n 3"],
    quats: Float[Tensor, "n 4"],
    scales: Float[Tensor, "n 3"],
    opacities: Float[Tensor, "n"],
    viewmats: Float[Tensor, "c 4 4"],
    Ks: Float[Tensor, "c 3 3"],
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> dict[str, Tensor]:
    """EWA projection of 3D Gaussians into C pinhole cameras, with gsplat's culling.

    Args:
        means, quats (wxyz), scales (activated), opacities (activated): the Gaussians.
        viewmats: world-to-camera [C, 4, 4] with OpenCV axes; Ks: intrinsics [C, 3, 3].
        width, height: image size in pixels.
        eps2d, near_plane, far_plane, radius_clip: as ``gsplat.rasterization``.

    Returns:
        ``means2d`` [C,N,2] pixels, ``conics`` [C,N,3] (upper triangle of the inverse 2D covariance,
        a b c), ``depths`` [C,N] camera z, ``radii`` [C,N,2] int32 (0 = culled), ``covars2d`` [C,N,2,2].
    """
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    rot = quat_to_rotmat(quats)
    M = rot * scales[:, None, :]
    cov = M @ M.transpose(-1, -2)  # [N, 3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    cov_c = torch.einsum("cij,njk,clk->cnil", R, cov, R)  # [C, N, 3, 3]
    tx, ty, tz = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    # The Jacobian is evaluated at a mean clamped into a 1.3x widened frustum (gsplat, 3DGS).
    jx = tz * torch.minimum(torch.maximum(tx / tz, -lim_x_neg), lim_x_pos)
    jy = tz * torch.minimum(torch.maximum(ty / tz, -lim_y_neg), lim_y_pos)
    zeros = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zeros, -fx * jx / tz**2, zeros, fy / tz, -fy * jy / tz**2], dim=-1).view(*tz.shape, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)
    cov2d = cov2d + eps2d * torch.eye(2, device=means.device, dtype=means.dtype)
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        op = opacities.detach()[None, :].expand_as(tz)
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
        rx = torch.ceil(extend * a.detach().clamp_min(0).sqrt())
        ry = torch.ceil(extend * c.detach().clamp_min(0).sqrt())
        m2 = means2d.detach()
        valid = (
            (tz.detach() >= near_plane) & (tz.detach() <= far_plane) & (det.detach() > 0) & (op >= ALPHA_THRESHOLD)
            & ~((rx <= radius_clip) & (ry <= radius_clip))
            & (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width) & (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height)
        )
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]
    return {"means2d": means2d, "conics": conics, "depths": tz, "radii": radii.to(torch.int32), "covars2d": cov2d}


def composite_dense(
    means2d: Float[Tensor, "c n 2"],
    conics: Float[Tensor, "c n 3"],
    colors: Float[Tensor, "c n d"],
    opacities: Float[Tensor, "n"],
    depths: Float[Tensor, "c n"],
    radii: Tensor,
    width: int,
    height: int,
    backgrounds: Optional[Float[Tensor, "c d"]] = None,
    max_elements: int = 1 << 23,
) -> tuple[Float[Tensor, "c h w d"], Float[Tensor, "c h w 1"], Float[Tensor, "c h w 1"]]:
    """Front-to-back alpha compositing of every visible Gaussian at every pixel centre.

    Args:
        means2d, conics, depths, radii: from :func:`project_gaussians`.
        colors: per-camera colours [C, N, D]; opacities: activated [N].
        backgrounds: optional [C, D] colour behind the Gaussians.
        max_elements: pixel x Gaussian elements per chunk (bounds memory).

    Returns:
        (colours [C,H,W,D], alphas [C,H,W,1], expected depth [C,H,W,1] = sum(w z) / alpha).
    """
    C, N = depths.shape
    D = colors.shape[-1]
    device, dtype = means2d.device, means2d.dtype
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij")
    pix = torch.stack([u.reshape(-1) + 0.5, v.reshape(-1) + 0.5], dim=-1)  # [P, 2]
    P = pix.shape[0]
    out_c, out_a, out_d = [], [], []
    for ci in range(C):
        vis = (radii[ci] > 0).all(-1)
        idx = torch.nonzero(vis)[:, 0]
        idx = idx[torch.argsort(depths[ci, idx].detach(), stable=True)]
        m, q, col = means2d[ci, idx], conics[ci, idx], colors[ci, idx]
        op, z = opacities[idx], depths[ci, idx]
        chunk = max(1, max_elements // max(1, idx.numel()))
        cols, alps, deps = [], [], []
        for s in range(0, P, chunk):
            p = pix[s : s + chunk]
            dx = m[None, :, 0] - p[:, None, 0]
            dy = m[None, :, 1] - p[:, None, 1]
            sigma = 0.5 * (q[None, :, 0] * dx * dx + q[None, :, 2] * dy * dy) + q[None, :, 1] * dx * dy
            alpha = torch.clamp_max(op[None, :] * torch.exp(-sigma), 0.999)
            alpha = torch.where((sigma < 0) | (alpha < ALPHA_THRESHOLD), torch.zeros_like(alpha), alpha)
            log_t = torch.cumsum(torch.log1p(-alpha), dim=1)  # log transmittance after each Gaussian
            keep = (torch.exp(log_t) > TRANSMITTANCE_STOP).to(dtype)  # monotone: the pixel stops once it fails
            t_before = torch.exp(log_t - torch.log1p(-alpha))
            w = alpha * t_before * keep
            cols.append(w @ col)
            a = w.sum(-1, keepdim=True)
            alps.append(a)
            deps.append((w @ z[:, None]) / a.clamp_min(1e-10))
        c_img, a_img = torch.cat(cols), torch.cat(alps)
        if backgrounds is not None:
            c_img = c_img + (1.0 - a_img) * backgrounds[ci][None, :]
        out_c.append(c_img.view(height, width, D))
        out_a.append(a_img.view(height, width, 1))
        out_d.append(torch.cat(deps).view(height, width, 1))
    return torch.stack(out_c), torch.stack(out_a), torch.stack(out_d)


def rasterize_dense(
    means: Float[Tensor, "n 3"],
    quats: Float[Tensor, "n 4"],
    scales: Float[Tensor, "n 3"],
    opacities: Float[Tensor, "n"],
    colors: Tensor,
    viewmats: Float[Tensor, "c 4 4"],
    Ks: Float[Tensor, "c 3 3"],
    width: int,
    height: int,
    sh_degree: Optional[int] = None,
    backgrounds: Optional[Float[Tensor, "c d"]] = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    max_elements: int = 1 << 23,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The dense counterpart of ``gsplat.rasterization(..., packed=False, render_mode="RGB+ED")``.

    Args:
        means, quats, scales, opacities: activated Gaussian parameters ([N,3], [N,4], [N,3], [N]).
        colors: [N, D] features, or SH coefficients [N, K, 3] when ``sh_degree`` is given (view
            directions from the camera centres; colour = max(SH + 0.5, 0), as gsplat).
        viewmats, Ks, width, height, backgrounds, eps2d, near_plane, far_plane, radius_clip: as gsplat.

    Returns:
        (render [C,H,W,D+1] = colours and expected depth, alphas [C,H,W,1], info) with the info keys
        gsplat's DefaultStrategy reads.
    """
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip)
    C = viewmats.shape[0]
    if sh_degree is None:
        cols = colors[None].expand(C, *colors.shape)
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = means[None, :, :] - campos[:, None, :]
        cols = torch.clamp_min(eval_sh(sh_degree, colors[None].expand(C, *colors.shape), dirs) + 0.5, 0.0)
    means2d = proj["means2d"]
    rgb, alpha, depth = composite_dense(
        means2d, proj["conics"], cols, opacities, proj["depths"], proj["radii"], width, height, backgrounds, max_elements
    )
    info = {
        "means2d": means2d, "radii": proj["radii"], "conics": proj["conics"], "depths": proj["depths"],
        "width": width, "height": height, "n_cameras": C, "gaussian_ids": None,
    }
    return torch.cat([rgb, depth], dim=-1), alpha, info
