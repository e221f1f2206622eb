"""Asset export: marching cubes, UV rasterisation and texture baking, every exported file read back (trimesh,
plyfile as 3DGS viewers load splats), the ``rewardsds export`` command on run folders, and the turntable's
RGB | normals frames."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf
from PIL import Image
from scipy.spatial import cKDTree

from conftest import FAST, ROOT, compose, gpu_test
from rewardsds.cameras import CameraSampler
from rewardsds.config import CameraConfig
from rewardsds.errors import ConfigError
from rewardsds.export_assets import main, write_exports
from rewardsds.representations._mesh import marching_cubes, marching_tetrahedra
from rewardsds.representations._texture import Z_UP_TO_Y_UP, dilate, rasterize_uv, rasterize_uv_reference
from rewardsds.representations.base import ExportOptions
from rewardsds.representations.config import GaussiansConfig, NeRFConfig
from rewardsds.representations.gaussians import Gaussians, gaussian_ply_fields
from rewardsds.representations.nerf import NeRF
from rewardsds.representations.views import normal_image, normals_from_depth, render_views, to_uint8_frames, turntable_video

NERF_FILES = ["mesh.ply", "mesh.obj", "mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png", "mesh.glb"]
SMALL = dict(n_levels=2, n_features_per_level=4, base_resolution=8, per_level_scale=1.5, num_samples_per_ray=16,
             mesh_resolution=32, mesh_threshold=5.0, texture_size=64)


def bumpy_nerf(**kw) -> NeRF:
    """A small NeRF whose grid features are far from their near-zero init: a bumpy surface with varied colours
    around the density blob."""
    torch.manual_seed(0)
    nerf = NeRF(NeRFConfig(**{**SMALL, **kw}))
    with torch.no_grad():
        for p in nerf.encoding.parameters():
            p.uniform_(-1.0, 1.0)
        nerf.feature_net[-1].weight.mul_(10.0)  # saturated colours, so that texel checks can fail
    return nerf.eval()


def sphere_field(n: int, radius: float) -> torch.Tensor:
    g = torch.linspace(-1, 1, n)
    X, Y, Z = torch.meshgrid(g, g, g, indexing="ij")
    return radius + 0.4 - torch.sqrt(X**2 + Y**2 + Z**2)  # level 0.4: the sphere of ``radius``


# ------------------------------------------------------------------------------------- marching cubes
def test_marching_cubes_on_an_analytic_sphere():
    v, f = marching_cubes(sphere_field(48, 0.6), 0.4, (-1, -1, -1), (1, 1, 1))
    r = v.norm(dim=-1)
    assert r.min() > 0.595 and r.max() < 0.6005
    m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.01)  # positive: faces wound outward
    v0, f0 = marching_cubes(sphere_field(16, 0.6), 5.0, (-1, -1, -1), (1, 1, 1))
    assert v0.shape == (0, 3) and f0.shape == (0, 3)


def test_marching_cubes_closes_a_surface_that_leaves_the_box():
    g = torch.linspace(-1, 1, 24)
    _, _, Z = torch.meshgrid(g, g, g, indexing="ij")
    v, f = marching_cubes(1.0 - Z.abs(), 0.5, (-1, -1, -1), (1, 1, 1))  # the slab |z| < 0.5 spans the box in x and y
    m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
    assert m.is_watertight and v.abs().max() <= 1.0 + 1e-6
    assert m.volume == pytest.approx(2.0 * 2.0 * 1.0, rel=1e-3)


def test_marching_cubes_agrees_with_the_marching_tetrahedra_surface_of_a_nerf():
    """Both extract the same linear interpolation of the same samples; marching tetrahedra also cuts the cube
    diagonals, so vertices differ by less than a cell and the enclosed volumes by little."""
    nerf = bumpy_nerf()
    n, level = 40, 5.0
    grid = nerf.density_grid(n)
    box = ((-1.0,) * 3, (1.0,) * 3)
    vc, fc = marching_cubes(grid, level, *box)
    vt, ft = marching_tetrahedra(grid, level, *box)
    mc = trimesh.Trimesh(vc.numpy(), fc.numpy(), process=False)
    mt = trimesh.Trimesh(vt.numpy(), ft.numpy(), process=False)
    assert mc.is_watertight and mt.is_watertight
    assert mc.volume == pytest.approx(mt.volume, rel=0.02)
    cell = 2.0 / (n - 1)
    d_ct = cKDTree(vt.numpy()).query(vc.numpy())[0]
    d_tc = cKDTree(vc.numpy()).query(vt.numpy())[0]
    assert d_ct.max() < cell * math.sqrt(3) and d_tc.max() < cell * math.sqrt(3)
    assert d_ct.mean() < 0.25 * cell and d_tc.mean() < 0.25 * cell


# ------------------------------------------------------------------------------------- UV raster, dilation
def _texel_centre_uv(col: float, row: float, size: int) -> list[float]:
    return [(col + 0.5) / size, 1.0 - (row + 0.5) / size]


def test_uv_rasteriser_matches_the_per_texel_reference():
    size = 12
    g = torch.Generator().manual_seed(0)
    uv = torch.rand(30, 2, generator=g)
    faces = torch.randint(0, 30, (12, 3), generator=g)
    # a quad with corners on texel centres: its diagonal and edges pass through centres (ties between faces)
    quad = torch.tensor([_texel_centre_uv(c, r, size) for c, r in ((1, 1), (8, 1), (8, 8), (1, 8))])
    segment = torch.tensor([_texel_centre_uv(c, c, size) for c in (2, 6)])
    uv = torch.cat([uv, quad, segment])
    # the last face repeats a vertex: zero area, although the segment runs through texel centres
    faces = torch.cat([faces, torch.tensor([[30, 31, 32], [30, 32, 33], [34, 35, 35]])])
    face, bary = rasterize_uv(uv, faces, size, max_candidates=5)  # tiny chunks: every face its own pass
    ref_face, ref_bary = rasterize_uv_reference(uv, faces, size)
    assert torch.equal(face, ref_face)
    assert torch.allclose(bary, ref_bary, atol=1e-6)
    covered = face >= 0
    assert covered.sum() > 40 and not (face == 14).any()  # the degenerate face covers nothing
    assert torch.allclose(bary[covered].sum(-1), torch.ones(int(covered.sum())), atol=1e-5)
    assert int(face[4, 4]) == 13  # on the quad's diagonal: the higher face index wins
    big, big_bary = rasterize_uv(uv, faces, size)  # one pass
    assert torch.equal(big, face) and torch.equal(big_bary, bary)


def test_dilation_fills_rings_with_the_mean_of_covered_neighbours():
    image = torch.zeros(5, 6, 3)
    mask = torch.zeros(5, 6, dtype=torch.bool)
    image[2, 2], image[2, 3] = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    mask[2, 2] = mask[2, 3] = True
    out, grown = dilate(image, mask, 1)
    assert grown.sum() == 12 and grown[1:4, 1:5].all()
    assert torch.equal(out[2, 2], image[2, 2]) and torch.equal(out[2, 3], image[2, 3])  # covered texels are kept
    assert torch.allclose(out[1, 2], torch.tensor([0.5, 0.5, 0.0]))  # next to both
    assert torch.allclose(out[1, 1], torch.tensor([1.0, 0.0, 0.0]))  # next to the red one only
    _, all_grown = dilate(image, mask, 10)
    assert all_grown.all()


def test_shape_annotations_hold_under_beartype():
    from beartype import beartype
    from jaxtyping import TypeCheckError, jaxtyped

    def checked(f):
        # the annotations of the function itself, not of torch.no_grad's (*args, **kwargs) wrapper
        return jaxtyped(typechecker=beartype)(getattr(f, "__wrapped__", f))

    v, f = checked(marching_cubes)(sphere_field(12, 0.5), 0.4, (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    assert v.shape[1] == 3 and f.shape[1] == 3
    face, bary = checked(rasterize_uv)(torch.rand(5, 2), torch.tensor([[0, 1, 2], [2, 3, 4]]), 8)
    assert face.shape == (8, 8) and bary.shape == (8, 8, 3)
    with pytest.raises(TypeCheckError):
        checked(rasterize_uv)(torch.rand(5, 3), torch.tensor([[0, 1, 2]]), 8)
    image, grown = checked(dilate)(torch.rand(4, 5, 3), torch.rand(4, 5) > 0.5, 1)
    assert image.shape == (4, 5, 3) and grown.dtype == torch.bool
    cams = CameraSampler(CameraConfig(eval_resolution=6)).turntable(2)
    assert checked(normals_from_depth)(torch.rand(2, 1, 6, 6) + 1.0, cams, True).shape == (2, 3, 6, 6)


# ------------------------------------------------------------------------------------- NeRF files
@pytest.fixture(scope="module")
def nerf_export(tmp_path_factory):
    nerf = bumpy_nerf()
    out = tmp_path_factory.mktemp("nerf") / "export"
    paths = write_exports(nerf, out, ExportOptions())
    return nerf, out, paths


def test_nerf_export_writes_every_format_and_nothing_else(nerf_export):
    _, out, paths = nerf_export
    assert [p.name for p in paths] == NERF_FILES
    assert sorted(p.name for p in out.iterdir()) == sorted(NERF_FILES)
    assert [p.name for p in out.parent.iterdir()] == ["export"]  # the staging folder is gone


def test_vertex_colour_meshes_read_back(nerf_export):
    nerf, out, _ = nerf_export
    verts, faces = marching_cubes(nerf.density_grid(32), 5.0, (-1.0,) * 3, (1.0,) * 3)
    expected = (nerf.albedo(verts).numpy() * 255).round()
    for name in ("mesh.ply", "mesh.obj"):
        m = trimesh.load(out / name, process=False)
        assert len(m.vertices) == len(verts) and len(m.faces) == len(faces), name
        assert np.allclose(m.vertices, verts.numpy(), atol=1e-6) and np.array_equal(m.faces, faces.numpy()), name
        assert np.abs(m.visual.vertex_colors[:, :3].astype(float) - expected).max() <= 1.0, name
        assert m.is_watertight and m.volume > 0, name
    assert expected.std(0).min() > 5  # the colours vary: the comparison means something


def _point_in_uv_triangle(p, tri):
    a, b, c = tri
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[0] * v1[1] - v1[0] * v0[1]
    l1 = (v2[0] * v1[1] - v1[0] * v2[1]) / den
    l2 = (v0[0] * v2[1] - v2[0] * v0[1]) / den
    return np.array([1 - l1 - l2, l1, l2])


def _texel_samples(mesh, size):
    """(rows, cols, 3D points) of texel centres that lie inside a face's UV triangle (the centre nearest to the
    face's UV centroid), the point found from the loaded file's own UVs and vertices."""
    rows, cols, points = [], [], []
    uv = mesh.visual.uv
    for f in mesh.faces:
        tri = uv[f]
        u, v = tri.mean(0)
        col, row = min(int(u * size), size - 1), min(int((1 - v) * size), size - 1)
        bary = _point_in_uv_triangle(np.array([(col + 0.5) / size, 1 - (row + 0.5) / size]), tri)
        if (bary >= 0).all():
            rows.append(row)
            cols.append(col)
            points.append(bary @ mesh.vertices[f])
    return np.array(rows), np.array(cols), np.array(points)


def test_textured_obj_has_unit_uvs_and_a_texture_of_the_colour_field(nerf_export):
    nerf, out, _ = nerf_export
    ply = trimesh.load(out / "mesh.ply", process=False)
    obj = trimesh.load(out / "mesh_textured.obj", process=False)
    assert isinstance(obj.visual, trimesh.visual.TextureVisuals)
    uv = obj.visual.uv
    assert uv.shape == (len(obj.vertices), 2) and uv.min() >= 0.0 and uv.max() <= 1.0
    assert len(obj.faces) == len(ply.faces) and len(obj.vertices) >= len(ply.vertices)
    assert cKDTree(ply.vertices).query(obj.vertices)[0].max() < 1e-6  # seams duplicate vertices, never move them
    texture = np.asarray(obj.visual.material.image.convert("RGB"))
    png = np.asarray(Image.open(out / "mesh_textured.png").convert("RGB"))
    assert texture.shape == (64, 64, 3) and np.array_equal(texture, png)
    assert "map_Kd mesh_textured.png" in (out / "mesh_textured.mtl").read_text()
    _assert_texels_match_the_field(nerf, obj, texture)


def _assert_texels_match_the_field(nerf, obj, texture):
    rows, cols, points = _texel_samples(obj, texture.shape[0])
    assert len(points) >= 20
    field = nerf.albedo(torch.from_numpy(points).float()).cpu().numpy()
    assert field.std(0).max() > 0.05
    assert np.abs(texture[rows, cols] / 255.0 - field).max() <= 1.0 / 255 + 1e-3
    flipped = texture[::-1]  # a v-flipped texture (the wrong UV convention) would not match
    assert np.abs(flipped[rows, cols] / 255.0 - field).max() > 0.05


def test_glb_embeds_the_texture_and_is_y_up(nerf_export):
    _, out, _ = nerf_export
    obj = trimesh.load(out / "mesh_textured.obj", process=False)
    scene = trimesh.load(out / "mesh.glb", process=False)
    (glb,) = scene.geometry.values()
    assert np.allclose(glb.vertices, obj.vertices @ Z_UP_TO_Y_UP.T, atol=1e-5)
    assert np.array_equal(glb.faces, obj.faces) and np.allclose(glb.visual.uv, obj.visual.uv, atol=1e-6)
    material = glb.visual.material
    assert np.array_equal(np.asarray(material.baseColorTexture.convert("RGB")), np.asarray(obj.visual.material.image.convert("RGB")))
    assert material.metallicFactor == 0.0
    # a proper rotation: the (seam-split, so not watertight) surface encloses the same positive volume
    assert glb.volume == pytest.approx(trimesh.load(out / "mesh.ply", process=False).volume, rel=1e-4)


def test_a_failed_export_leaves_nothing_behind(tmp_path):
    nerf = bumpy_nerf()
    out = tmp_path / "export"
    with pytest.raises(ConfigError, match=r"--threshold = 10000.0: is not crossed .*Fix: pick a level inside that range, e.g. --threshold="):
        write_exports(nerf, out, ExportOptions(mesh_threshold=1e4, threshold_key="--threshold"))
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "mesh.ply").write_text("earlier")
    with pytest.raises(ConfigError, match="representation.texture_size = 8"):
        write_exports(nerf, out, ExportOptions(texture_size=8))
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (out / "mesh.ply").read_text() == "earlier"


def test_an_empty_format_list_writes_nothing(tmp_path):
    for rep in (bumpy_nerf(), Gaussians(GaussiansConfig(num_points=4))):
        assert write_exports(rep, tmp_path / "export", ExportOptions(formats=())) == []
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- Gaussians .ply
def _viewer_load(path):
    """Read a 3DGS .ply as the reference 3DGS code loads it (plyfile, properties by name)."""
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    n = len(v["x"])
    k = len(rest) // 3
    return names, {
        "means": np.stack([v["x"], v["y"], v["z"]], 1),
        "sh0": np.stack([v[f"f_dc_{i}"] for i in range(3)], 1)[:, None, :],
        "shN": np.stack([v[r] for r in rest], 1).reshape(n, 3, k).transpose(0, 2, 1) if k else np.zeros((n, 0, 3)),
        "opacities": np.asarray(v["opacity"]),
        "scales": np.stack([v[f"scale_{i}"] for i in range(3)], 1),
        "quats": np.stack([v[f"rot_{i}"] for i in range(4)], 1),
    }


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_gaussians_ply_reads_back_with_its_sh_degree(tmp_path, degree):
    gs = Gaussians(GaussiansConfig(num_points=40, sh_degree=degree, seed=1))
    with torch.no_grad():
        for key in gs.params:
            gs.params[key].normal_()
    (path,) = write_exports(gs, tmp_path / "export", ExportOptions())
    names, back = _viewer_load(path)
    assert names == gaussian_ply_fields(degree)
    assert sum(n.startswith("f_rest_") for n in names) == 3 * ((degree + 1) ** 2 - 1)
    for key, value in gs.params.items():
        assert np.array_equal(back[key], value.detach().numpy()), key
    if degree == 0:
        assert back["shN"].shape == (40, 0, 3)


def test_gaussians_ply_has_the_degree_active_at_the_exported_step(tmp_path):
    gs = Gaussians(GaussiansConfig(num_points=10, sh_degree=3, sh_degree_interval=100))
    with torch.no_grad():
        gs.params["shN"].normal_()
    (path,) = write_exports(gs, tmp_path, ExportOptions(step=150))  # one band active at step 150
    names, back = _viewer_load(path)
    assert sum(n.startswith("f_rest_") for n in names) == 9
    assert np.array_equal(back["shN"], gs.params["shN"][:, :3].detach().numpy())


# ------------------------------------------------------------------------------------- the command
SMALL_NERF = ["representation.num_samples_per_ray=16", "representation.mesh_resolution=24", "representation.mesh_threshold=4.0",
              "representation.n_levels=2", "representation.texture_size=32"]
RUN = ["experiment=analytic_3d", "strategy=none", "n_noises=2", "lookahead.steps=1", "cameras.eval_resolution=16", "output.eval_views=1",
       "output.turntable_frames=0", *FAST]


@pytest.fixture(scope="module")
def nerf_run(tmp_path_factory):
    """A real 2-step NeRF run (Lightning checkpoint, saved config) that exported its mesh at the end."""
    from rewardsds.train import train

    run = tmp_path_factory.mktemp("runs") / "nerf"
    m = train(compose([*RUN, *SMALL_NERF, "steps=2", "output.export_formats=[mesh]"]), run)
    assert m["status"] == "complete" and m["exports"] == ["export/mesh.ply", "export/mesh.obj"], m.get("export_error")
    return run


def test_export_command_rebuilds_the_trained_scene(nerf_run, tmp_path, capsys):
    out = tmp_path / "again"
    assert main([str(nerf_run), "--format", "mesh,textured", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / f) for f in NERF_FILES]
    # the same step, settings and parameters as the end of training: the very same mesh
    trained = trimesh.load(nerf_run / "export" / "mesh.ply", process=False)
    again = trimesh.load(out / "mesh.ply", process=False)
    assert np.array_equal(trained.vertices, again.vertices) and np.array_equal(trained.faces, again.faces)
    assert np.array_equal(trained.visual.vertex_colors, again.visual.vertex_colors)
    assert not (nerf_run / "eval").exists() or len(list((nerf_run / "eval").glob("*.png"))) == 1  # no views re-rendered
    assert main([str(nerf_run), "--format", "mesh", "--resolution", "16", "--out", str(tmp_path / "coarse")]) == 0
    assert len(trimesh.load(tmp_path / "coarse" / "mesh.ply", process=False).vertices) < len(again.vertices)


def test_export_command_defaults_to_the_run_export_folder(nerf_run):
    before = (nerf_run / "export" / "mesh.ply").read_bytes()
    assert main([str(nerf_run), "--format", "textured"]) == 0
    names = sorted(p.name for p in (nerf_run / "export").iterdir())
    assert names == sorted(["mesh.ply", "mesh.obj", "mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png", "mesh.glb"])
    assert (nerf_run / "export" / "mesh.ply").read_bytes() == before  # other formats are kept


def _fake_run(tmp_path, name, overrides, state, iteration=0):
    """A run folder as training leaves it: config_resolved.yaml and a checkpoint holding ``state``."""
    run = tmp_path / name
    run.mkdir()
    from rewardsds.config import without_hydra

    (run / "config_resolved.yaml").write_text(OmegaConf.to_yaml(without_hydra(compose(overrides)), resolve=True))
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": state, "rewardsds": {"iteration": iteration}}, run / "checkpoints" / "last.ckpt")
    return run


def test_gaussians_run_exports_without_its_initial_ply(tmp_path):
    gs = Gaussians(GaussiansConfig(num_points=30, sh_degree=2, sh_degree_interval=1000, seed=3))
    with torch.no_grad():
        gs.params["shN"].normal_()
    state = {f"representation.{k}": v for k, v in gs.state_dict().items()}
    run = _fake_run(tmp_path, "gs", ["experiment=analytic_3d", "representation=gaussians", "representation.sh_degree=2",
                                     "representation.init=ply", f"representation.init_path={tmp_path / 'moved.ply'}"],
                    state, iteration=1500)
    assert main([str(run)]) == 0
    names, back = _viewer_load(run / "export" / "gaussians.ply")
    assert sum(n.startswith("f_rest_") for n in names) == 9  # degree 1 active at step 1500
    assert np.array_equal(back["means"], gs.params["means"].detach().numpy())
    assert np.array_equal(back["shN"], gs.params["shN"][:, :3].detach().numpy())


@pytest.mark.parametrize("case", ["missing", "no_config", "no_checkpoint", "corrupt", "2d", "threshold", "format", "no_format",
                                  "resolution"])
def test_export_command_bad_input_exits_2_with_one_message(tmp_path, capsys, case):
    nerf_cfg = ["experiment=analytic_3d", *SMALL_NERF]
    args: list[str]
    if case == "missing":
        args, expect = [str(tmp_path / "nope")], "run = .*nope.*: is not a folder"
    elif case == "no_config":
        (tmp_path / "empty").mkdir()
        args, expect = [str(tmp_path / "empty")], "is not a run folder .*config_resolved.yaml.*Fix: give the folder"
    elif case == "no_checkpoint":
        run = _fake_run(tmp_path, "r", nerf_cfg, {})
        (run / "checkpoints" / "last.ckpt").unlink()
        args, expect = [str(run)], "has no checkpoint at .*last.ckpt.*Fix: .*rewardsds resume="
    elif case == "corrupt":
        run = _fake_run(tmp_path, "r", nerf_cfg, {})
        (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
        args, expect = [str(run)], "has an unreadable checkpoint .*last.ckpt"
    elif case == "2d":
        run = _fake_run(tmp_path, "r", ["experiment=analytic"], {"representation.latents": torch.zeros(1, 3, 16, 16)})
        args, expect = [str(run)], "is a 2D run \\(LatentImage\\).*Fix: .*representation=nerf"
    else:
        torch.manual_seed(0)
        nerf = NeRF(NeRFConfig(n_levels=2, num_samples_per_ray=16, mesh_resolution=24, mesh_threshold=4.0, texture_size=32))
        run = _fake_run(tmp_path, "r", nerf_cfg, {f"representation.{k}": v for k, v in nerf.state_dict().items()})
        args, expect = {
            "threshold": ([str(run), "--threshold", "1e5"], r"--threshold = 100000.0: is not crossed by the density field .*Fix: .*--threshold="),
            "format": ([str(run), "--format", "gaussians"], "--format = 'gaussians': names format.*NeRF.*Fix: use all or any of: mesh, textured"),
            "no_format": ([str(run), "--format", ","], "--format = ',': names no format"),
            "resolution": ([str(run), "--resolution", "4"], "--resolution = 4: must be >= 8"),
        }[case]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rewardsds export: error: ")
    import re

    assert re.search(expect, err), err
    assert not any(p.name == "export" or p.name.startswith(".export") for p in tmp_path.rglob("*"))


def test_module_entry_point_exit_status(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "rewardsds.export_assets", str(tmp_path / "nope")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2 and "is not a folder" in r.stderr and r.stdout == ""


# ------------------------------------------------------------------------------------- turntable
def test_normals_from_depth_of_an_analytic_sphere():
    """Depth maps of a sphere (radius 0.5 at the origin) in both conventions give its normals (p / r)."""
    cams = CameraSampler(CameraConfig(eval_resolution=48, eval_distance=2.0, eval_fovy=40.0)).turntable(2)
    origins, dirs = cams.rays()
    b = (origins * dirs).sum(-1)
    disc = b**2 - (origins.square().sum(-1) - 0.25)
    hit = disc > 0.02  # well inside the silhouette
    t = -b - disc.clamp_min(0).sqrt()
    points = origins + dirs * t[..., None]
    truth = torch.nn.functional.normalize(points, dim=-1).permute(0, 3, 1, 2)
    forward = -cams.c2w[:, :3, 2]
    z = t * (dirs * forward[:, None, None, :]).sum(-1)
    interior = hit.clone()
    interior[:, 1:-1, 1:-1] &= hit[:, :-2, 1:-1] & hit[:, 2:, 1:-1] & hit[:, 1:-1, :-2] & hit[:, 1:-1, 2:]
    for depth, along in ((t, True), (z, False)):
        n = normals_from_depth(torch.where(hit, depth, torch.zeros_like(depth))[:, None], cams, along)
        cos = (n * truth).sum(1)[interior]
        assert cos.min() > 0.995, (along, float(cos.min()))


@pytest.mark.parametrize("rep", ["nerf", "gaussians"])
def test_turntable_frames_show_rgb_and_normals_side_by_side(rep):
    scene = bumpy_nerf() if rep == "nerf" else Gaussians(GaussiansConfig(num_points=60, init_radius=0.4, init_opacity=0.9, seed=2))
    cams = CameraSampler(CameraConfig(eval_resolution=16)).turntable(3)
    video = turntable_video(scene, cams, step=0)
    assert video.shape == (3, 16, 32, 3) and video.dtype == np.uint8
    views = render_views(scene, cams, step=0)
    assert np.array_equal(video[:, :, :16], to_uint8_frames(views["rgb"]))
    normals = views["normal"] if rep == "nerf" else normals_from_depth(views["depth"], cams, along_ray=False)
    assert np.array_equal(video[:, :, 16:], to_uint8_frames(normal_image(normals, views["opacity"])))
    assert video[:, :, 16:].std() > 5  # normals, not a blank panel


def test_export_formats_setting_is_checked_against_the_representation():
    from rewardsds.config import validate

    assert [f.value for f in validate(compose(["experiment=analytic_3d"])).output.export_formats] == ["all"]
    assert validate(compose(["experiment=analytic_3d", "output.export_formats=[]"])).output.export_formats == []
    typed = validate(compose(["experiment=analytic_3d", "output.export_formats=[textured]"]))
    assert [f.value for f in typed.output.export_formats] == ["textured"]
    with pytest.raises(ConfigError, match=r"output.export_formats = \['mesh'\]: names mesh, which representation=gaussians does not write "
                                          r"\(it writes: gaussians\).*Fix: use \[all\], \[\] or a list of: gaussians"):
        validate(compose(["experiment=analytic_3d", "representation=gaussians", "output.export_formats=[mesh]"]))
    with pytest.raises(ConfigError, match=r"output.export_formats = \['gaussians'\]: names gaussians, which representation=latent_image does not write \(it writes: nothing\).*Fix: use \[all\] or \[\]"):
        validate(compose(["experiment=analytic", "output.export_formats=[gaussians]"]))


# ------------------------------------------------------------------------------------- GPU
@gpu_test
def test_uv_rasteriser_on_cuda_equals_the_cpu():
    g = torch.Generator().manual_seed(1)
    uv = torch.rand(3000, 2, generator=g)
    faces = torch.randint(0, 3000, (2000, 3), generator=g)
    cpu = rasterize_uv(uv, faces, 256, max_candidates=1 << 16)
    gpu = rasterize_uv(uv.cuda(), faces.cuda(), 256)
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.allclose(gpu[1].cpu(), cpu[1], atol=1e-6)


@gpu_test
def test_nerf_export_on_cuda_reads_back(tmp_path):
    nerf = bumpy_nerf(mesh_resolution=64, texture_size=256).cuda()
    paths = write_exports(nerf, tmp_path / "export", ExportOptions())
    assert [p.name for p in paths] == NERF_FILES
    obj = trimesh.load(tmp_path / "export" / "mesh_textured.obj", process=False)
    _assert_texels_match_the_field(nerf, obj, np.asarray(obj.visual.material.image.convert("RGB")))
    gs = Gaussians(GaussiansConfig(num_points=500, init_radius=0.4, init_opacity=0.9, sh_degree=1, seed=2)).cuda()
    cams = CameraSampler(CameraConfig(eval_resolution=64)).turntable(4).to("cuda")
    video = turntable_video(gs, cams, step=10**9)  # gsplat's depth -> normals
    assert video.shape == (4, 64, 128, 3)
    assert np.array_equal(video[:, :, :64], to_uint8_frames(render_views(gs, cams, step=10**9)["rgb"]))
    assert video[:, :, 64:].std() > 5
