"""UV-unwrapped, textured meshes: xatlas charts, a texel rasteriser, texture baking and OBJ/GLB writers.

A mesh becomes a textured asset in four steps:

1. :func:`unwrap_uv`: xatlas cuts the surface into charts and packs them into one square atlas of about
   ``size`` texels a side, with ``padding`` empty texels between charts. Vertices on chart seams are
   split (each output vertex remembers its source vertex).
2. :func:`rasterize_uv`: every texel centre is located in the UV triangle that covers it (face index and
   barycentric coordinates), vectorised over (triangle, texel-in-bounding-box) candidates.
   :func:`rasterize_uv_reference` is the plain per-texel, per-triangle loop it is tested against.
3. :func:`bake_texture`: the texel's 3D position (the barycentric mix of its triangle's vertices) is
   coloured by a colour field, e.g. a NeRF's albedo. :func:`dilate` then grows every chart by a few
   texels into the empty gutter, so bilinear sampling and mip-maps at chart borders never mix in the
   background (no seams).
4. :func:`write_textured_obj` (``.obj`` + ``.mtl`` + ``.png``) and :func:`write_glb` (binary glTF, texture
   embedded) through trimesh.

UV convention: OBJ's (and trimesh's) ``v`` grows upwards, so texel row 0 (the top of the image) holds
``v`` near 1: texel (row r, column c) has its centre at ``u = (c + 0.5) / S``, ``v = 1 - (r + 0.5) / S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

#: Barycentric tolerance: a texel centre on an edge shared by two triangles (up to float32 UV rounding) is in both.
_INSIDE_EPS = 1e-6


@dataclass
class TexturedMesh:
    """A triangle mesh with one texture.

    Attributes:
        vertices: [V, 3] float32 positions (seam vertices are duplicated, one per chart).
        faces: [F, 3] int64 vertex indices, wound as the input mesh.
        uv: [V, 2] float32 texture coordinates in [0, 1] (OBJ convention: ``v`` up).
        texture: [S, S, 3] uint8 RGB image, row 0 at the top.
        source_vertex: [V] int64, the input vertex each vertex was copied from.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    source_vertex: np.ndarray


def unwrap_uv(
    vertices: Float[np.ndarray, "v 3"], faces: Int[np.ndarray, "f 3"], size: int, padding: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Charts and packing by xatlas into one atlas of about ``size`` x ``size`` texels.

    Args:
        vertices: [V, 3] positions.
        faces: [F, 3] vertex indices.
        size: texels per side of the atlas (xatlas scales the charts to approximately fill it).
        padding: empty texels between charts.

    Returns:
        (source vertex [V'] int64, faces [F, 3] int64 into the V' output vertices, uv [V', 2] float32 in [0, 1]).
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.texels_per_unit = 0.0  # 0 with a resolution: xatlas picks the scale that fits one atlas of that size
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:  # pragma: no cover - xatlas fits the charts into one atlas for texels_per_unit 0
        raise RuntimeError(f"xatlas packed the charts into {atlas.atlas_count} atlases instead of one")
    vmapping, indices, uv = atlas[0]
    return vmapping.astype(np.int64), indices.astype(np.int64), uv.astype(np.float32)


def _texel_coords(uv: Tensor, size: int) -> Tensor:
    """UV [V, 2] -> continuous texel coordinates (x = column, y = row) whose integers are texel centres."""
    uv = uv.double()
    return torch.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], dim=-1)


def _barycentric(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Barycentric weights [..., 3] of points p in triangles (a, b, c) (all [..., 2]) and twice the signed area."""
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    safe = torch.where(den == 0, torch.ones_like(den), den)
    l1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / safe
    l2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / safe
    return torch.stack([1.0 - l1 - l2, l1, l2], dim=-1), den


@torch.no_grad()
def rasterize_uv(
    uv: Float[Tensor, "v 2"], faces: Int[Tensor, "f 3"], size: int, max_candidates: int = 1 << 22
) -> tuple[Int[Tensor, "s s"], Float[Tensor, "s s 3"]]:
    """Which UV triangle covers each texel centre of a ``size`` x ``size`` texture, and where.

    Every triangle is paired with the texel centres inside its bounding box (in chunks of at most
    ``max_candidates`` pairs); a centre inside several triangles (on a shared edge) takes the highest
    face index, so the result does not depend on the chunking or the device.

    Args:
        uv: [V, 2] texture coordinates in [0, 1] (``v`` up).
        faces: [F, 3] vertex indices.
        size: texels per side.
        max_candidates: most (triangle, texel) pairs tested at once (bounds memory).

    Returns:
        (face index [S, S] int64, -1 where no triangle covers the texel; barycentric weights [S, S, 3]
        float32 of the face's three vertices, zero where uncovered).
    """
    device = uv.device
    faces = faces.long()
    tri = _texel_coords(uv, size)[faces]  # [F, 3, 2]
    # A centre within the barycentric tolerance lies at most eps * (the triangle's altitude <= size * sqrt(2))
    # outside the triangle: widen the boxes by that, so they hold every centre the inside test accepts.
    margin = 2.0 * _INSIDE_EPS * size
    lo = (tri.amin(1) - margin).ceil().clamp(min=0).long()
    hi = (tri.amax(1) + margin).floor().clamp(max=size - 1).long()
    w = (hi[:, 0] - lo[:, 0] + 1).clamp_min(0)
    h = (hi[:, 1] - lo[:, 1] + 1).clamp_min(0)
    count = w * h
    face_of = torch.full((size * size,), -1, dtype=torch.long, device=device)
    bary_of = torch.zeros(size * size, 3, dtype=torch.float64, device=device)
    cum = torch.cumsum(count, 0)
    start = 0
    n_faces = faces.shape[0]
    while start < n_faces:
        # the largest run of faces whose candidates fit (at least one face, however large its box)
        base = int(cum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cum, base + max_candidates, right=True))
        end = min(max(end, start + 1), n_faces)
        fid = torch.arange(start, end, device=device)
        cnt = count[start:end]
        fid = fid.repeat_interleave(cnt)
        if fid.numel():
            first = torch.cumsum(cnt, 0) - cnt
            local = torch.arange(fid.numel(), device=device) - first.repeat_interleave(cnt)
            x = lo[fid, 0] + local % w[fid]
            y = lo[fid, 1] + local // w[fid]
            p = torch.stack([x, y], dim=-1).double()
            t = tri[fid]
            bary, den = _barycentric(p, t[:, 0], t[:, 1], t[:, 2])
            inside = (bary >= -_INSIDE_EPS).all(-1) & (den.abs() > 1e-12)
            pix, fid, bary = (y * size + x)[inside], fid[inside], bary[inside]
            face_of.scatter_reduce_(0, pix, fid, reduce="amax")
            keep = face_of[pix] == fid
            bary_of[pix[keep]] = bary[keep]
        start = end
    return face_of.view(size, size), bary_of.view(size, size, 3).float()


@torch.no_grad()
def rasterize_uv_reference(uv: Tensor, faces: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Plain version of :func:`rasterize_uv`: every texel centre against every triangle (tests only)."""
    tri = _texel_coords(uv, size)[faces.long()]
    face_of = torch.full((size, size), -1, dtype=torch.long)
    bary_of = torch.zeros(size, size, 3, dtype=torch.float64)
    for row in range(size):
        for col in range(size):
            p = torch.tensor([float(col), float(row)], dtype=torch.float64)
            for f in range(tri.shape[0]):
                bary, den = _barycentric(p, tri[f, 0], tri[f, 1], tri[f, 2])
                if bool((bary >= -_INSIDE_EPS).all()) and abs(float(den)) > 1e-12:
                    face_of[row, col] = f  # the last (highest) covering face wins, as rasterize_uv
                    bary_of[row, col] = bary
    return face_of, bary_of.float()


@torch.no_grad()
def dilate(
    image: Float[Tensor, "s t c"], mask: Bool[Tensor, "s t"], pixels: int
) -> tuple[Float[Tensor, "s t c"], Bool[Tensor, "s t"]]:
    """Grow the covered texels ``pixels`` times by one texel: each empty texel next to covered ones takes
    their mean (8-neighbourhood).

    Args:
        image: [S, T, C] float texture.
        mask: [S, T] bool, covered texels.
        pixels: rings to add.

    Returns:
        (dilated image, grown mask); covered texels keep their values.
    """
    image, mask = image.clone(), mask.clone().bool()
    kernel = torch.ones(1, 1, 3, 3, dtype=image.dtype, device=image.device)
    c = image.shape[-1]
    for _ in range(int(pixels)):
        m = mask.to(image.dtype)[None, None]
        count = F.conv2d(m, kernel, padding=1)[0, 0]
        total = F.conv2d((image * m[0, 0, :, :, None]).permute(2, 0, 1)[:, None], kernel, padding=1)[:, 0].permute(1, 2, 0)
        new = ~mask & (count > 0)
        if not bool(new.any()):
            break
        image[new] = total[new] / count[new][:, None].expand(-1, c)
        mask = mask | new
    return image, mask


@torch.no_grad()
def bake_texture(
    vertices: Float[Tensor, "v 3"],
    faces: Int[Tensor, "f 3"],
    color_fn: Callable[[Tensor], Tensor],
    size: int,
    padding: int = 4,
) -> TexturedMesh:
    """UV-unwrap a mesh and bake a colour field into its texture.

    Args:
        vertices: [V, 3] positions (CPU or the colour field's device).
        faces: [F, 3] vertex indices.
        color_fn: points [N, 3] (on ``vertices``' device) -> colours [N, 3] in [0, 1].
        size: texture side in texels.
        padding: texels between charts, and rings of dilation into that gutter.

    Returns:
        the textured mesh; texels that no chart covers or reaches by dilation hold the mean colour.
    """
    device = vertices.device
    src, new_faces, uv = unwrap_uv(vertices.detach().cpu().numpy(), faces.detach().cpu().numpy(), size, padding)
    new_vertices = vertices.detach()[torch.from_numpy(src).to(device)]
    faces_t = torch.from_numpy(new_faces).to(device)
    face_of, bary = rasterize_uv(torch.from_numpy(uv).to(device), faces_t, size)
    covered = face_of >= 0
    corners = new_vertices[faces_t[face_of[covered]]]  # [N, 3 corners, 3]
    points = (bary[covered][:, :, None].to(corners) * corners).sum(1)
    image = torch.zeros(size, size, 3, device=device)
    if points.shape[0]:
        image[covered] = color_fn(points).float().clamp(0.0, 1.0)
        image, grown = dilate(image, covered, padding)
        image[~grown] = image[covered].mean(0)
    texture = (image * 255.0).round().to(torch.uint8).cpu().numpy()
    return TexturedMesh(vertices=new_vertices.float().cpu().numpy(), faces=new_faces, uv=uv, texture=texture, source_vertex=src)


def _trimesh(mesh: TexturedMesh, material, vertices: np.ndarray | None = None):
    import trimesh

    visual = trimesh.visual.TextureVisuals(uv=mesh.uv, material=material)
    v = mesh.vertices if vertices is None else vertices
    return trimesh.Trimesh(vertices=v, faces=mesh.faces, visual=visual, process=False)


def write_textured_obj(out_dir: Path, stem: str, mesh: TexturedMesh) -> list[Path]:
    """Write ``<stem>.obj``, ``<stem>.mtl`` and the texture ``<stem>.png`` into ``out_dir``.

    The material is white diffuse (``Kd 1 1 1``, so viewers show the texture unscaled) without specular.

    Returns:
        the written paths: the .obj first, then the material and texture files.
    """
    from PIL import Image
    from trimesh.exchange.obj import export_obj
    from trimesh.visual.material import SimpleMaterial

    material = SimpleMaterial(image=Image.fromarray(mesh.texture), name=stem, diffuse=(255, 255, 255, 255),
                              ambient=(255, 255, 255, 255), specular=(0, 0, 0, 255))
    text, files = export_obj(_trimesh(mesh, material), include_normals=False, include_color=False, include_texture=True,
                             return_texture=True, mtl_name=f"{stem}.mtl")
    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.obj"]
    paths[0].write_text(text)
    for name, data in sorted(files.items(), key=lambda kv: not kv[0].endswith(".mtl")):
        p = out_dir / name
        p.write_bytes(data)
        paths.append(p)
    return paths


#: z-up world (this package's cameras) -> y-up glTF: (x, y, z) -> (x, z, -y), a proper rotation (winding kept).
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def write_glb(path: Path, mesh: TexturedMesh) -> Path:
    """Write a binary glTF with the texture embedded as the base colour (metallic 0, roughness 1).

    glTF is y-up, so the vertices are rotated from the z-up world by :data:`Z_UP_TO_Y_UP`; the OBJ and PLY
    files keep the world's z-up coordinates.
    """
    from PIL import Image
    from trimesh.visual.material import PBRMaterial

    material = PBRMaterial(baseColorTexture=Image.fromarray(mesh.texture), metallicFactor=0.0, roughnessFactor=1.0,
                           name=Path(path).stem)
    data = _trimesh(mesh, material, vertices=mesh.vertices @ Z_UP_TO_Y_UP.T).export(file_type="glb")
    Path(path).write_bytes(data)
    return Path(path)
