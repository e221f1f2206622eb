"""Iso-surface extraction on a regular grid by marching tetrahedra (plain PyTorch, no scikit-image).

Each grid cube is split into the 6 tetrahedra of the Kuhn (Freudenthal) triangulation, the paths
000 -> e_a -> e_a + e_b -> 111 over the axis orders (a, b, c). Neighbouring cubes then share face
diagonals, so the surface is closed wherever the level set does not leave the grid. Per tetrahedron
with 1 or 3 vertices inside there is one triangle, with 2 inside a quad (two triangles); vertices sit
on grid edges, linearly interpolated, and are shared by all faces that use the same edge. Each face
is wound so that its normal points from the inside (values above the level) to the outside.

Only cubes that straddle the level are expanded into tetrahedra, so memory grows with the surface,
not with the grid volume.
"""

from __future__ import annotations

import itertools

import torch
from jaxtyping import Float, Int
from torch import Tensor

_CUBE_CORNERS = torch.tensor([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=torch.long)


def _kuhn_tetrahedra() -> Tensor:
    """[6, 4] corner indices (bit k = axis k) of the Kuhn triangulation of the unit cube."""
    tets = []
    for order in itertools.permutations(range(3)):
        corner, path = 0, [0]
        for axis in order:
            corner |= 1 << axis
            path.append(corner)
        tets.append(path)
    return torch.tensor(tets, dtype=torch.long)


_TETS = _kuhn_tetrahedra()


@torch.no_grad()
def marching_tetrahedra(
    values: Float[Tensor, "x y z"],
    level: float,
    lower: Float[Tensor, "3"] | tuple[float, float, float],
    upper: Float[Tensor, "3"] | tuple[float, float, float],
) -> tuple[Float[Tensor, "v 3"], Int[Tensor, "f 3"]]:
    """Triangle mesh of the surface ``values == level`` of a field sampled on a regular grid.

    Args:
        values: field samples [X, Y, Z] at the grid vertices; "inside" is ``values > level``.
        level: the iso-value.
        lower, upper: world coordinates of the grid corners ``values[0, 0, 0]`` and ``values[-1, -1, -1]``.

    Returns:
        (vertices [V, 3] float32 in world coordinates, faces [F, 3] int64), faces wound outward
        (counter-clockwise seen from the outside). Empty tensors when the level is never crossed.
    """
    values = values.detach().float().cpu()
    X, Y, Z = values.shape
    lower_t = torch.as_tensor(lower, dtype=torch.float32)
    upper_t = torch.as_tensor(upper, dtype=torch.float32)
    step = (upper_t - lower_t) / torch.tensor([X - 1, Y - 1, Z - 1], dtype=torch.float32)

    inside = values > level
    # Cubes whose 8 corners are not all on one side.
    corners_in = torch.stack(
        [inside[i : X - 1 + i, j : Y - 1 + j, k : Z - 1 + k] for i, j, k in _CUBE_CORNERS.tolist()], dim=-1
    )
    mixed = corners_in.any(-1) & ~corners_in.all(-1)
    cubes = mixed.nonzero()  # [C, 3]
    if cubes.shape[0] == 0:
        return torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)

    # Grid coordinates of every tetrahedron vertex: [C * 6, 4, 3].
    tet_coords = (cubes[:, None, None, :] + _CUBE_CORNERS[_TETS][None]).reshape(-1, 4, 3)
    flat = (tet_coords[..., 0] * Y + tet_coords[..., 1]) * Z + tet_coords[..., 2]  # [T, 4] vertex ids
    vals = values.reshape(-1)[flat]
    ins = vals > level
    count = ins.sum(-1)
    keep = (count > 0) & (count < 4)
    flat, vals, ins, count, tet_coords = flat[keep], vals[keep], ins[keep], count[keep], tet_coords[keep]
    order = torch.argsort(ins.to(torch.int8), dim=1, stable=True)  # outside first, then inside

    def gather(idx: Tensor, x: Tensor) -> Tensor:
        return torch.gather(x, 1, idx)

    tri_edges = []  # each [n, 3, 2]: the grid edge (tet-local vertex pair) of each face corner
    one = count == 1  # lone inside vertex is order[:, 3]
    if one.any():
        o = order[one]
        lone = o[:, 3:4].expand(-1, 3)
        tri_edges.append((one.nonzero()[:, 0], torch.stack([lone, o[:, 0:3]], dim=-1)))
    three = count == 3  # lone outside vertex is order[:, 0]
    if three.any():
        o = order[three]
        lone = o[:, 0:1].expand(-1, 3)
        tri_edges.append((three.nonzero()[:, 0], torch.stack([o[:, 1:4], lone], dim=-1)))
    two = count == 2  # outside c, d = order[:, 0:2]; inside a, b = order[:, 2:4]
    if two.any():
        o = order[two]
        c, d, a, b = o[:, 0], o[:, 1], o[:, 2], o[:, 3]
        ac, ad, bd, bc = (torch.stack([p, q], -1) for p, q in ((a, c), (a, d), (b, d), (b, c)))
        ids = two.nonzero()[:, 0]
        tri_edges.append((ids, torch.stack([ac, ad, bd], dim=1)))
        tri_edges.append((ids, torch.stack([ac, bd, bc], dim=1)))

    tet_ids = torch.cat([t for t, _ in tri_edges])  # [F]
    edges = torch.cat([e for _, e in tri_edges])  # [F, 3, 2] tet-local vertex indices
    p_local, q_local = edges[..., 0], edges[..., 1]
    p_id = torch.gather(flat[tet_ids], 1, p_local)
    q_id = torch.gather(flat[tet_ids], 1, q_local)
    p_val = torch.gather(vals[tet_ids], 1, p_local)
    q_val = torch.gather(vals[tet_ids], 1, q_local)
    p_pos = torch.gather(tet_coords[tet_ids], 1, p_local[..., None].expand(-1, -1, 3)).float()
    q_pos = torch.gather(tet_coords[tet_ids], 1, q_local[..., None].expand(-1, -1, 3)).float()
    t = ((level - p_val) / (q_val - p_val)).clamp(0.0, 1.0)[..., None]
    pos = lower_t + (p_pos + t * (q_pos - p_pos)) * step  # [F, 3, 3]

    # Wind every face so that its normal points from the tetrahedron's inside vertices to its outside ones.
    tet_ins = ins[tet_ids].float()
    tet_xyz = lower_t + tet_coords[tet_ids].float() * step
    c_in = (tet_xyz * tet_ins[..., None]).sum(1) / tet_ins.sum(1, keepdim=True)
    c_out = (tet_xyz * (1 - tet_ins)[..., None]).sum(1) / (1 - tet_ins).sum(1, keepdim=True)
    normal = torch.cross(pos[:, 1] - pos[:, 0], pos[:, 2] - pos[:, 0], dim=-1)
    flip = (normal * (c_out - c_in)).sum(-1) < 0

    n_grid = X * Y * Z
    key = torch.minimum(p_id, q_id) * n_grid + torch.maximum(p_id, q_id)  # [F, 3] undirected edge keys
    uniq, inverse = torch.unique(key.reshape(-1), return_inverse=True)
    vertices = torch.zeros(uniq.shape[0], 3)
    vertices[inverse] = pos.reshape(-1, 3)
    faces = inverse.view(-1, 3)
    faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    # Faces collapse when the level is met exactly at a grid vertex; drop those with repeated vertices.
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return vertices, faces[ok]
