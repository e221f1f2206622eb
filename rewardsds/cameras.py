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

Derived conventions, tested in ``tests/test_cameras.py``:

- Pixel (row ``v``, column ``u``) has its centre at ``(u + 0.5, v + 0.5)``; row 0 is the top of the
  image. Its ray direction in camera axes is ``((u + 0.5 - W/2) / f, -(v + 0.5 - H/2) / f, -1)``.
- :meth:`Cameras.w2c_opencv` with :meth:`Cameras.intrinsics` projects a world point to the pixel whose
  ray passes through it (gsplat's ``viewmats``/``Ks``).
- View names for prompts (threestudio's prompt processor): ``overhead`` if elevation > 60; otherwise
  ``front`` if the azimuth, wrapped to [-180, 180), is strictly within 45 degrees of 0 (camera on +x),
  ``back`` if strictly within 45 degrees of 180, else ``side``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from rewardsds.config import CameraConfig, ElevationSampling, LightSampling
from rewardsds.errors import ConfigError


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
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Float[Tensor, "b 3"]:
        """Camera centres in world coordinates [b, 3]."""
        return self.c2w[:, :3, 3]

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

    def rays(self) -> tuple[Float[Tensor, "b h w 3"], Float[Tensor, "b h w 3"]]:
        """World-space ray origins and unit directions through every pixel centre.

        Returns:
            (origins [b, H, W, 3], directions [b, H, W, 3]); row 0 is the top of the image.
        """
        dev, dt = self.c2w.device, self.c2w.dtype
        v, u = torch.meshgrid(
            torch.arange(self.height, device=dev, dtype=dt), torch.arange(self.width, device=dev, dtype=dt), indexing="ij"
        )
        f = self.focal.to(dt).view(-1, 1, 1)
        x = (u + 0.5 - self.width / 2) / f
        y = -(v + 0.5 - self.height / 2) / f
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [b, H, W, 3]
        d_world = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], d_cam)
        d_world = F.normalize(d_world, dim=-1)
        origins = self.position.view(-1, 1, 1, 3).expand_as(d_world)
        return origins, d_world


def look_at_c2w(position: Float[Tensor, "b 3"], target: Optional[Tensor] = None, up: Optional[Tensor] = None) -> Tensor:
    """c2w [b, 4, 4] for cameras at ``position`` looking at ``target`` (origin) with world ``up`` (+z).

    ``target`` and ``up`` may be one vector [3] or one per camera [b, 3] (perturbed centres/ups).
    """
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


def position_to_spherical(position: Float[Tensor, "b 3"]) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`spherical_to_position`: (elevation deg, azimuth deg in (-180, 180], distance)."""
    d = position.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin((position[:, 2] / d.clamp_min(1e-12)).clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(position[:, 1], position[:, 0]))
    return elevation, azimuth, d


def orbit_cameras(
    elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, fovy: Tensor, width: int, height: int
) -> Cameras:
    """Cameras on a sphere around the origin looking at it."""
    pos = spherical_to_position(elevation_deg.float(), azimuth_deg.float(), distance.float())
    return Cameras(look_at_c2w(pos), fovy.float(), width, height, elevation_deg.float(), azimuth_deg.float(), distance.float())


# ----------------------------------------------------------------------------------------- view-dependent prompts
VIEW_SUFFIXES: dict[str, str] = {
    "side": ", side view",
    "front": ", front view",
    "back": ", back view",
    "overhead": ", overhead view",
}


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuth wrapped to [-180, 180) degrees."""
    return torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0


def view_directions(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> list[str]:
    """View names (front/side/back/overhead) per camera, with threestudio's prompt-processor rules.

    Args:
        elevation_deg, azimuth_deg: [b] in degrees (azimuth 0 = camera on +x = "front").
        front_threshold: half-width in degrees of the front sector around azimuth 0 (strict).
        back_threshold: half-width in degrees of the back sector around azimuth 180 (strict).
        overhead_threshold: elevation in degrees above which a view is "overhead" (strict; wins over
            the azimuth sectors).

    Returns:
        b names, each a key of :data:`VIEW_SUFFIXES`.
    """
    az = wrap_azimuth(azimuth_deg.detach().double().cpu())
    el = elevation_deg.detach().double().cpu()
    names = []
    for e, a in zip(el.tolist(), az.tolist()):
        if e > overhead_threshold:
            names.append("overhead")
        elif -front_threshold < a < front_threshold:
            names.append("front")
        elif a > 180.0 - back_threshold or a < -180.0 + back_threshold:
            names.append("back")
        else:
            names.append("side")
    return names


def view_prompts(prompt: str, names: Sequence[str]) -> list[str]:
    """``prompt`` with threestudio's view suffix appended per view (", front view", ...)."""
    return [prompt + VIEW_SUFFIXES[n] for n in names]


# ----------------------------------------------------------------------------------------- sampling
class CameraSampler:
    """Random orbit cameras for score distillation, fixed evaluation orbits, and view names.

    Training views (:meth:`sample`) follow threestudio's ``random-camera`` / MVDream's
    ``random-multiview-camera`` data modules: per object (group of ``views_per_object`` views) one
    elevation, distance, field of view, perturbation and light; azimuths of a group are
    ``360 / views_per_object`` degrees apart with a random offset (4 orthogonal views for MVDream).
    All randomness comes from the generator passed in, and the number of draws does not depend on
    the options, so a seed gives the same cameras whatever else changes.

    Args:
        cfg: the validated settings (:class:`rewardsds.config.CameraConfig`, which documents each: schedules of the
            resolution and batch size, the ranges of elevation, azimuth, distance and field of view, perturbations,
            light sampling, the evaluation orbit and the view-name thresholds); kept as ``self.cfg``.
    """

    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg

    # -- schedules
    def resolution_at(self, step: int) -> int:
        """Square render size in pixels at ``step``."""
        return int(round(self.cfg.resolution.value(step)))

    def batch_size_at(self, step: int) -> int:
        """Views per step at ``step`` (a multiple of views_per_object)."""
        return int(round(self.cfg.batch_size.value(step)))

    # -- training views
    def sample(self, generator: torch.Generator, step: int = 0) -> Cameras:
        """Draw one step's training cameras (on the CPU; move them with ``.to(device)``).

        Args:
            generator: a CPU ``torch.Generator``; the only source of randomness.
            step: optimisation step, for the resolution and batch-size schedules.

        Returns:
            Cameras with ``batch_size_at(step)`` views, object-major (``extras["views_per_object"]``).
        """
        b = self.batch_size_at(step)
        c = self.cfg
        v = c.views_per_object
        if b % v != 0 or b < v:
            raise ConfigError(
                "cameras.batch_size", b, f"is not a positive multiple of cameras.views_per_object = {v} at step {step}",
                f"use a batch size of {max(v, b - b % v)} (or another multiple of {v})",
            )
        g = b // v
        res = self.resolution_at(step)

        def u(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator)

        def n(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator)

        def per_view(x: Tensor) -> Tensor:
            return x.repeat_interleave(v, dim=0)

        # Every draw below happens whatever the options, so that the stream stays aligned.
        coin, u_el_deg, u_el_area = u(g), u(g), u(g)
        u_az = u(g if v > 1 else b)
        u_fov, u_dist = u(g), u(g)
        u_cam, n_center, n_up = u(g, 3), n(g, 3), n(g, 3)
        u_ldist, n_light, u_laz, u_lel = u(g), n(g, 3), u(g), u(g)

        lo, hi = c.elevation.low, c.elevation.high
        el_deg = lo + (hi - lo) * u_el_deg
        s0, s1 = math.sin(math.radians(lo)), math.sin(math.radians(hi))
        el_area = torch.rad2deg(torch.asin((s0 + (s1 - s0) * u_el_area).clamp(-1.0, 1.0)))
        if c.elevation_sampling is ElevationSampling.uniform:
            elevation = el_deg
        elif c.elevation_sampling is ElevationSampling.area:
            elevation = el_area
        else:  # mixed: threestudio draws uniform degrees with probability 0.5, else uniform area
            elevation = torch.where(coin < 0.5, el_deg, el_area)

        a0, a1 = c.azimuth.low, c.azimuth.high
        if v > 1:
            azimuth = ((u_az[:, None] + torch.arange(v)[None, :]) / v).reshape(-1) * (a1 - a0) + a0
        elif c.batch_uniform_azimuth:
            azimuth = (u_az + torch.arange(b)) / b * (a1 - a0) + a0
        else:
            azimuth = u_az * (a1 - a0) + a0

        f0, f1 = c.fovy.low, c.fovy.high
        fovy = torch.deg2rad(f0 + (f1 - f0) * u_fov)
        d0, d1 = c.distance.low, c.distance.high
        distance = d0 + (d1 - d0) * u_dist
        if c.relative_distance:
            distance = distance / torch.tan(0.5 * fovy)

        elevation, fovy, distance = per_view(elevation), per_view(fovy), per_view(distance)
        position = spherical_to_position(elevation, azimuth, distance)
        position = position + per_view((2.0 * u_cam - 1.0) * c.camera_perturb)
        center = per_view(n_center * c.center_perturb)
        up = torch.tensor([0.0, 0.0, 1.0]) + per_view(n_up * c.up_perturb)
        c2w = look_at_c2w(position, center, up)

        l0, l1 = c.light_distance.low, c.light_distance.high
        light_distance = per_view(l0 + (l1 - l0) * u_ldist)
        if c.light_sampling is LightSampling.magic3d:
            # Light within 30..90 degrees above the camera's local horizon (Magic3D / threestudio).
            z = F.normalize(position, dim=-1)
            x = F.normalize(torch.stack([z[:, 1], -z[:, 0], torch.zeros_like(z[:, 0])], -1) + 1e-12, dim=-1)
            y = F.normalize(torch.cross(z, x, dim=-1), dim=-1)
            rot = torch.stack([x, y, z], dim=-1)
            laz = per_view(u_laz * 2.0 * math.pi - math.pi)
            lel = per_view(u_lel * math.pi / 3.0 + math.pi / 6.0)
            local = torch.stack([torch.cos(lel) * torch.cos(laz), torch.cos(lel) * torch.sin(laz), torch.sin(lel)], -1)
            light = (rot @ local[:, :, None])[:, :, 0] * light_distance[:, None]
        else:  # dreamfusion: around the camera direction
            direction = F.normalize(position + per_view(n_light) * c.light_position_perturb, dim=-1)
            light = direction * light_distance[:, None]

        return Cameras(
            c2w, fovy, res, res, elevation, azimuth, distance, light, extras={"views_per_object": v},
        )

    # -- fixed cameras
    def orbit(self, n: int, resolution: Optional[int] = None, azimuth_offset: float = 0.0) -> Cameras:
        """``n`` views evenly spaced in azimuth (no duplicate end view) on the evaluation orbit.

        The point light sits at each camera (threestudio's evaluation lighting).
        """
        if n < 1:
            raise ConfigError("views", n, "must be >= 1", "ask for at least one view")
        res = self.cfg.eval_resolution if resolution is None else int(resolution)
        azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n) + azimuth_offset
        elevation = torch.full((n,), float(self.cfg.eval_elevation))
        distance = torch.full((n,), float(self.cfg.eval_distance))
        fovy = torch.full((n,), math.radians(self.cfg.eval_fovy))
        cams = orbit_cameras(elevation, azimuth, distance, fovy, res, res)
        cams.light_position = cams.position.clone()
        return cams

    def eval_cameras(self, n: int, resolution: Optional[int] = None) -> Cameras:
        """The fixed evaluation cameras for metrics: ``n`` views on the orbit, the first at azimuth 0."""
        return self.orbit(n, resolution)

    def turntable(self, frames: int, resolution: Optional[int] = None) -> Cameras:
        """Cameras of a turntable video with ``frames`` frames (one full turn, loops seamlessly)."""
        return self.orbit(frames, resolution)

    # -- prompts
    def view_names(self, cameras: Cameras) -> list[str]:
        """front/side/back/overhead per view with this sampler's thresholds."""
        return view_directions(
            cameras.elevation, cameras.azimuth, self.cfg.front_threshold, self.cfg.back_threshold, self.cfg.overhead_threshold
        )

    def view_suffixes(self, cameras: Cameras) -> list[str]:
        """threestudio's prompt suffix per view (", front view", ...)."""
        return [VIEW_SUFFIXES[n] for n in self.view_names(cameras)]

