"""Camera conventions, orbit sampling statistics, fixed orbits and view-dependent prompt names."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
from omegaconf import OmegaConf

from rewardsds.cameras import (
    CameraSampler,
    VIEW_SUFFIXES,
    look_at_c2w,
    orbit_cameras,
    position_to_spherical,
    spherical_to_position,
    view_directions,
    view_prompts,
)
from rewardsds.config import CameraConfig, Range
from rewardsds.errors import ConfigError
from rewardsds.schedules import Schedule
from rewardsds.schema import build


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------- conventions
def test_c2w_is_orthonormal_right_handed_and_looks_at_origin():
    g = gen(1)
    el = torch.rand(64, generator=g) * 170 - 85
    az = torch.rand(64, generator=g) * 720 - 360
    d = torch.rand(64, generator=g) * 3 + 0.5
    cams = orbit_cameras(el, az, d, torch.full((64,), 0.7), 32, 32)
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64), atol=1e-5)
    # OpenGL camera: it looks along its -z axis, i.e. from its position towards the origin.
    forward = -R[:, :, 2]
    to_origin = torch.nn.functional.normalize(-cams.position, dim=-1)
    assert torch.allclose(forward, to_origin, atol=1e-5)
    # Up is +z in the world: the camera's y axis has a non-negative world z component.
    assert (R[:, 2, 1] >= -1e-6).all()
    assert torch.allclose(cams.c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(64, 4))


def test_azimuth_zero_is_on_plus_x_and_ninety_on_plus_y():
    p = spherical_to_position(torch.tensor([0.0, 0.0, 90.0]), torch.tensor([0.0, 90.0, 0.0]), torch.tensor([2.0, 2.0, 2.0]))
    assert torch.allclose(p, torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]), atol=1e-6)


def test_spherical_round_trip():
    g = gen(2)
    el = torch.rand(100, generator=g) * 178 - 89
    az = torch.rand(100, generator=g) * 358 - 179
    d = torch.rand(100, generator=g) * 4 + 0.1
    e2, a2, d2 = position_to_spherical(spherical_to_position(el, az, d))
    assert torch.allclose(e2, el, atol=1e-3)
    assert torch.allclose(a2, az, atol=1e-3)
    assert torch.allclose(d2, d, atol=1e-5)
    # Azimuths outside (-180, 180] come back wrapped.
    _, a3, _ = position_to_spherical(spherical_to_position(torch.tensor([10.0]), torch.tensor([270.0]), torch.tensor([1.0])))
    assert a3.item() == pytest.approx(-90.0, abs=1e-4)


def test_opencv_projection_hits_the_pixel_whose_ray_passes_through_the_point():
    sampler = CameraSampler(CameraConfig(resolution=24, batch_size=4, camera_perturb=0.1, center_perturb=0.1, up_perturb=0.05))
    cams = sampler.sample(gen(3)).with_resolution(24, 16)
    origins, dirs = cams.rays()
    assert origins.shape == dirs.shape == (4, 16, 24, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(4, 16, 24), atol=1e-5)
    # A point on the ray of pixel (row 3, col 17) projects to that pixel's centre.
    pts = origins[:, 3, 17] + dirs[:, 3, 17] * 2.0
    cam = cams.w2c_opencv() @ torch.cat([pts, torch.ones(4, 1)], -1)[:, :, None]
    uvw = cams.intrinsics() @ cam[:, :3]
    uv = uvw[:, :2, 0] / uvw[:, 2:, 0]
    assert torch.allclose(uv, torch.tensor([17.5, 3.5]).expand(4, 2), atol=1e-3)
    assert (cam[:, 2, 0] > 0).all()  # OpenCV: in front of the camera means +z
    # Row 0 is the top of the image: its rays point further up (+z world) than the bottom row's.
    assert (dirs[:, 0, :, 2].mean(-1) > dirs[:, -1, :, 2].mean(-1)).all()


# ------------------------------------------------------------------------------------- sampling
def test_multiview_groups_share_everything_but_azimuth():
    s = CameraSampler(CameraConfig(batch_size=16, views_per_object=4, resolution=32))
    cams = s.sample(gen(4))
    assert len(cams) == 16 and cams.width == cams.height == 32 and cams.extras["views_per_object"] == 4
    for key in ("elevation", "distance", "fovy"):
        x = getattr(cams, key).view(4, 4)
        assert torch.allclose(x, x[:, :1].expand(4, 4)), key
    # The light follows each view (dreamfusion: around the camera direction) at a per-group distance.
    ld = cams.light_position.norm(dim=-1).view(4, 4)
    assert torch.allclose(ld, ld[:, :1].expand(4, 4), atol=1e-5)
    az = cams.azimuth.view(4, 4)
    steps = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
    assert torch.allclose(steps, torch.full_like(steps, 90.0), atol=1e-4)
    offsets = torch.remainder(az[:, 0] + 180.0, 90.0)
    assert offsets.unique().numel() == 4  # a random offset per group
    # c2w is consistent with the stored spherical coordinates (no perturbation by default).
    e, a, d = position_to_spherical(cams.position)
    assert torch.allclose(e, cams.elevation, atol=1e-3) and torch.allclose(d, cams.distance, atol=1e-4)
    assert torch.allclose(torch.remainder(a - cams.azimuth + 180, 360) - 180, torch.zeros(16), atol=1e-3)


def test_ranges_are_respected_and_relative_distance_keeps_the_object_size():
    s = CameraSampler(CameraConfig(batch_size=4000, views_per_object=4))
    cams = s.sample(gen(5))
    assert cams.elevation.min() >= 0.0 and cams.elevation.max() <= 30.0
    fov = torch.rad2deg(cams.fovy)
    assert fov.min() >= 15.0 and fov.max() <= 60.0
    rel = cams.distance * torch.tan(cams.fovy / 2)
    assert rel.min() >= 0.8 - 1e-5 and rel.max() <= 1.0 + 1e-5
    assert cams.azimuth.min() >= -180.0 and cams.azimuth.max() < 180.0 + 1e-4
    # The whole ranges are used.
    assert fov.max() - fov.min() > 40.0 and cams.elevation.max() - cams.elevation.min() > 25.0

    s1 = CameraSampler(CameraConfig(batch_size=3000, views_per_object=1, elevation=(-10, 45), distance=(1.5, 2.0),
                                    relative_distance=False, fovy=(40, 70)))
    c1 = s1.sample(gen(6))
    assert c1.distance.min() >= 1.5 and c1.distance.max() <= 2.0
    assert c1.elevation.min() >= -10 and c1.elevation.max() <= 45
    # batch_uniform_azimuth: one azimuth per 360/b stratum.
    within = (c1.azimuth.double() + 180.0) / (360.0 / 3000) - torch.arange(3000)
    assert within.min() >= -1e-3 and within.max() <= 1.0 + 1e-3


@pytest.mark.parametrize("mode,expected", [("uniform", 1 / 3), ("area", 0.5), ("mixed", 0.5 * (1 / 3 + 0.5))])
def test_elevation_sampling_modes(mode, expected):
    # On [0, 90]: P(elevation < 30) is 1/3 uniform in degrees, sin(30) = 1/2 uniform in area.
    s = CameraSampler(CameraConfig(batch_size=8000, views_per_object=1, elevation=(0, 90), elevation_sampling=mode))
    el = s.sample(gen(7)).elevation
    frac = (el < 30).float().mean().item()
    assert frac == pytest.approx(expected, abs=0.025)


def test_sampling_is_reproducible_with_the_generator():
    s = CameraSampler(CameraConfig(batch_size=8, camera_perturb=0.1, center_perturb=0.2, up_perturb=0.02))
    a, b, c = s.sample(gen(11)), s.sample(gen(11)), s.sample(gen(12))
    for key in ("c2w", "fovy", "elevation", "azimuth", "distance", "light_position"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert not torch.allclose(a.c2w, c.c2w)
    # The global RNG plays no part.
    torch.manual_seed(123)
    d = s.sample(gen(11))
    assert torch.equal(a.c2w, d.c2w)


def test_draws_do_not_depend_on_options():
    # The same seed gives the same azimuths whatever the perturbation / elevation options.
    base = CameraSampler(CameraConfig(batch_size=8)).sample(gen(13))
    other = CameraSampler(CameraConfig(batch_size=8, camera_perturb=0.3, elevation_sampling="area", light_sampling="magic3d"))
    other = other.sample(gen(13))
    assert torch.equal(base.azimuth, other.azimuth) and torch.equal(base.fovy, other.fovy)


def test_perturbations_move_cameras_off_the_orbit():
    s = CameraSampler(CameraConfig(batch_size=64, views_per_object=1, camera_perturb=0.1, center_perturb=0.2, up_perturb=0.02))
    cams = s.sample(gen(14))
    on_orbit = spherical_to_position(cams.elevation, cams.azimuth, cams.distance)
    offset = cams.position - on_orbit
    assert offset.abs().max() <= 0.1 + 1e-6 and offset.abs().max() > 0.05
    forward = -cams.c2w[:, :3, 2]
    to_origin = torch.nn.functional.normalize(-cams.position, dim=-1)
    assert (forward * to_origin).sum(-1).min() < 0.9999  # the look-at target moved


def test_light_sampling():
    s = CameraSampler(CameraConfig(batch_size=400, views_per_object=4, light_sampling="magic3d"))
    cams = s.sample(gen(15))
    dist = cams.light_position.norm(dim=-1)
    assert dist.min() >= 0.8 - 1e-5 and dist.max() <= 1.5 + 1e-5
    # Magic3D: 30..90 degrees above the camera's horizon.
    cos_to_cam = (torch.nn.functional.normalize(cams.light_position, dim=-1) * torch.nn.functional.normalize(cams.position, dim=-1)).sum(-1)
    assert cos_to_cam.min() >= 0.5 - 1e-4
    s2 = CameraSampler(CameraConfig(batch_size=400, views_per_object=4, light_sampling="dreamfusion", light_position_perturb=0.0))
    c2 = s2.sample(gen(15))
    assert torch.allclose(torch.nn.functional.normalize(c2.light_position, dim=-1), torch.nn.functional.normalize(c2.position, dim=-1), atol=1e-5)


def test_resolution_and_batch_schedules():
    s = CameraSampler(CameraConfig(resolution=Schedule(start=64, end=256, start_step=5000, end_step=5000),
                                   batch_size={"start": 8, "end": 4, "start_step": 5000, "end_step": 5000}))
    early, late = s.sample(gen(0), step=4999), s.sample(gen(0), step=5000)
    assert (early.width, early.height, len(early)) == (64, 64, 8)
    assert (late.width, late.height, len(late)) == (256, 256, 4)


def test_eval_and_turntable_orbits():
    s = CameraSampler(CameraConfig(eval_elevation=15, eval_distance=3.0, eval_fovy=40, eval_resolution=128))
    cams = s.eval_cameras(8)
    assert len(cams) == 8 and cams.width == 128
    assert torch.allclose(cams.azimuth, torch.arange(8) * 45.0)
    assert torch.allclose(cams.elevation, torch.full((8,), 15.0))
    assert torch.allclose(cams.position.norm(dim=-1), torch.full((8,), 3.0), atol=1e-5)
    assert torch.allclose(cams.fovy, torch.full((8,), math.radians(40)))
    assert torch.allclose(cams.light_position, cams.position)
    t = s.turntable(60, resolution=32)
    assert len(t) == 60 and t.height == 32
    assert torch.equal(s.eval_cameras(8).c2w, cams.c2w)  # fixed cameras


# ------------------------------------------------------------------------------------- view prompts
@pytest.mark.parametrize(
    "elevation,azimuth,name",
    [
        (10, 0, "front"), (10, 44.9, "front"), (10, -44.9, "front"), (10, 45.0, "side"), (10, -45.0, "side"),
        (10, 90, "side"), (10, 135.0, "side"), (10, 135.1, "back"), (10, 180, "back"), (10, -135.1, "back"),
        (10, -180, "back"), (10, 360, "front"), (10, 225, "side"), (10, 539.9, "back"),
        (60.0, 0, "front"), (60.1, 0, "overhead"), (89, 180, "overhead"), (-30, 0, "front"),
    ],
)
def test_view_direction_thresholds(elevation, azimuth, name):
    assert view_directions(torch.tensor([float(elevation)]), torch.tensor([float(azimuth)])) == [name]


def test_view_suffixes_and_custom_thresholds():
    assert VIEW_SUFFIXES == {"front": ", front view", "side": ", side view", "back": ", back view", "overhead": ", overhead view"}
    names = view_directions(torch.tensor([0.0, 0.0]), torch.tensor([35.0, 160.0]), front_threshold=30, back_threshold=30)
    assert names == ["side", "back"]
    assert view_prompts("a fox", ["front", "overhead"]) == ["a fox, front view", "a fox, overhead view"]
    s = CameraSampler(CameraConfig())
    cams = s.eval_cameras(4)  # azimuths 0, 90, 180, 270
    assert s.view_suffixes(cams) == [", front view", ", side view", ", back view", ", side view"]


# ------------------------------------------------------------------------------------- config
def test_config_schema_is_the_sampler_setting_and_builds_it():
    params = [k for k in inspect.signature(CameraSampler.__init__).parameters if k != "self"]
    assert params == ["cfg"]  # every setting is a field of the schema, with its default there only
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CameraConfig), {"_target_": "rewardsds.cameras.CameraSampler"}))
    built = build(cfg)
    default = CameraSampler(CameraConfig())
    assert isinstance(built, CameraSampler) and built.cfg is cfg
    for f in dataclasses.fields(CameraConfig):
        if f.name != "_target_":
            assert getattr(built.cfg, f.name) == getattr(default.cfg, f.name), f.name
    assert torch.equal(built.sample(gen(0)).c2w, default.sample(gen(0)).c2w)


@pytest.mark.parametrize(
    "override,key",
    [
        ({"elevation": Range(-100, 30)}, "cameras.elevation"),
        ({"elevation": Range(40, 30)}, "cameras.elevation"),
        ({"distance": Range(-1.0, 1.0)}, "cameras.distance"),
        ({"fovy": Range(0, 60)}, "cameras.fovy"),
        ({"batch_size": Schedule(start=6)}, "cameras.batch_size"),
        ({"views_per_object": 0}, "cameras.views_per_object"),
        ({"camera_perturb": -0.1}, "cameras.camera_perturb"),
        ({"elevation_sampling": "gaussian"}, "cameras.elevation_sampling"),
    ],
)
def test_impossible_camera_settings_raise_config_error(override, key):
    with pytest.raises(ConfigError) as err:
        CameraConfig(**override)
    assert err.value.key == key and "Fix:" in str(err.value)


def test_sampler_rejects_a_batch_schedule_that_breaks_groups():
    s = CameraSampler(CameraConfig(batch_size=Schedule(start=8, end=4, start_step=0, end_step=4), views_per_object=4))
    with pytest.raises(ConfigError, match="cameras.batch_size"):
        s.sample(gen(0), step=2)  # 6 views mid-ramp is not a multiple of 4
    with pytest.raises(ConfigError, match="cameras.distance"):
        CameraSampler(CameraConfig(distance=(-2.0, 1.0)))


def test_look_at_handles_straight_down_views():
    c2w = look_at_c2w(torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]]))
    R = c2w[:, :3, :3]
    assert torch.isfinite(R).all()
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(2, 3, 3), atol=1e-5)
