"""Cameras: one convention for the whole project.

Conventions (the only place they are defined):

- World: right-handed, **z up**. Objects sit at the origin inside the unit-ish sphere.
- ``c2w``: camera-to-world 4x4, columns ``[right, up, back, position]`` with **OpenGL camera axes**
  (x right, y up, the camera looks along its -z). This is threestudio's and MVDream's "blender" world.
- Spherical coordinates: ``elevation`` (degrees above the xy-plane), ``azimuth`` (degrees, counter-
  clockwise from +x seen from above, threestudio convention: azimuth 0 puts the camera on +x),
  ``distance`` from the origin. MVDream's ``get_camera`` azimuth equals ours + 90 degrees.
- ``fovy``: vertical field of view in radians. Intrinsics use pixel centres at +0.5.
- Batches of views for multi-view priors are object-major: index = object * num_frames + view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class Cameras:
    """A batch of pinhole cameras.

    Attributes:
        c2w: camera-to-world [b, 4, 4] (OpenGL camera axes, z-up world).
        fovy: vertical field of view in radians [b].
        width, height: image size in pixels.
        elevation, azimuth, distance: spherical coordinates in degrees/degrees/units [b] (for prompts
            and logging; c2w is authoritative).
        light_position: optional point-light positions [b, 3] for shaded renders.
    """

    c2w: Float[Tensor, "b 4 4"]
    fovy: Float[Tensor, "b"]
    width: int
    height: int
    elevation: Float[Tensor, "b"]
    azimuth: Float[Tensor, "b"]
    distance: Float[Tensor, "b"]
    light_position: Optional[Float[Tensor, "b 3"]] = None
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: torch.device | str) -> "Cameras":
        move = lambda x: None if x is None else x.to(device)  # noqa: E731
        return Cameras(
            move(self.c2w), move(self.fovy), self.width, self.height, move(self.elevation), move(self.azimuth),
            move(self.distance), move(self.light_position), dict(self.extras),
        )

    def with_resolution(self, width: int, height: int) -> "Cameras":
        return Cameras(
            self.c2w, self.fovy, width, height, self.elevation, self.azimuth, self.distance, self.light_position,
            dict(self.extras),
        )

    def index(self, idx) -> "Cameras":
        sel = lambda x: None if x is None else x[idx]  # noqa: E731
        return Cameras(
            self.c2w[idx], self.fovy[idx], self.width, self.height, self.elevation[idx], self.azimuth[idx],
            self.distance[idx], sel(self.light_position), dict(self.extras),
        )

    def repeat(self, n: int) -> "Cameras":
        """Tile for n candidates, candidate-major."""
        rep = lambda x: None if x is None else x.repeat(n, *([1] * (x.dim() - 1)))  # noqa: E731
        return Cameras(
            rep(self.c2w), rep(self.fovy), self.width, self.height, rep(self.elevation), rep(self.azimuth),
            rep(self.distance), rep(self.light_position), dict(self.extras),
        )

    @property
    def focal(self) -> Tensor:
        """Focal length in pixels [b] from fovy and height."""
        return 0.5 * self.height / torch.tan(0.5 * self.fovy)

    def intrinsics(self) -> Float[Tensor, "b 3 3"]:
        b = len(self)
        K = torch.zeros(b, 3, 3, device=self.c2w.device, dtype=self.c2w.dtype)
        f = self.focal.to(self.c2w.dtype)
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, 0, 2] = self.width / 2
        K[:, 1, 2] = self.height / 2
        K[:, 2, 2] = 1
        return K

    def w2c_opencv(self) -> Float[Tensor, "b 4 4"]:
        """World-to-camera with OpenCV camera axes (x right, y down, looks along +z), as gsplat expects."""
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=self.c2w.device, dtype=self.c2w.dtype))
        return torch.linalg.inv(self.c2w @ flip)


def look_at_c2w(position: Float[Tensor, "b 3"], target: Optional[Tensor] = None, up: Optional[Tensor] = None) -> Tensor:
    """c2w [b, 4, 4] for cameras at ``position`` looking at ``target`` (origin) with world ``up`` (+z)."""
    b = position.shape[0]
    dev, dt = position.device, position.dtype
    target = torch.zeros_like(position) if target is None else target.expand_as(position)
    up = torch.tensor([0.0, 0.0, 1.0], device=dev, dtype=dt).expand(b, 3) if up is None else up.expand(b, 3)
    forward = torch.nn.functional.normalize(target - position, dim=-1)
    right = torch.cross(forward, up, dim=-1)
    # Looking straight up/down: any right vector orthogonal to forward will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.cross(forward, torch.tensor([0.0, 1.0, 0.0], device=dev, dtype=dt).expand(b, 3), dim=-1)
    right = torch.nn.functional.normalize(torch.where(degenerate, alt, right), dim=-1)
    cam_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, device=dev, dtype=dt).repeat(b, 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    return c2w


def spherical_to_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """Positions [b, 3] in the z-up world for elevation/azimuth in degrees (azimuth 0 on +x)."""
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([distance * torch.cos(e) * torch.cos(a), distance * torch.cos(e) * torch.sin(a), distance * torch.sin(e)], -1)


def orbit_cameras(
    elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, fovy: Tensor, width: int, height: int
) -> Cameras:
    """Cameras on a sphere around the origin looking at it."""
    pos = spherical_to_position(elevation_deg.float(), azimuth_deg.float(), distance.float())
    return Cameras(look_at_c2w(pos), fovy.float(), width, height, elevation_deg.float(), azimuth_deg.float(), distance.float())
