"""Runs and checkpoints written before the components took their schema object still load.

``tests/data/legacy_runs/`` holds two 2-step analytic_3d run folders (a NeRF and densified Gaussians) as rewardsds wrote
them at commit ddb6421: ``config_resolved.yaml`` with every setting, the representation's part of ``checkpoints/last.ckpt``
and the asset exported at the end of training. :data:`OLD_STATE` lists the state_dict (key: shape, dtype, sum of the
initial values after ``torch.manual_seed(0)``) that the code of that commit gave each component, so that checkpoints keep
loading and a seed keeps giving the same numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf

from conftest import FAST, compose
from rewardsds.config import CameraConfig
from rewardsds.export_assets import main
from rewardsds.representations.config import GaussiansConfig, LatentImageConfig, NeRFConfig
from rewardsds.representations.gaussians import Gaussians, read_ply
from rewardsds.representations.latent_image import LatentImage
from rewardsds.representations.nerf import NeRF
from rewardsds.schema import build

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_runs"

#: The overrides the legacy runs were trained with (``rewardsds.train.train(compose(overrides), run)``, 2 steps).
LEGACY_OVERRIDES = {
    "nerf": ["representation.num_samples_per_ray=16", "representation.mesh_resolution=16", "representation.mesh_threshold=4.0",
             "representation.n_levels=1", "representation.base_resolution=8", "representation.hidden_dim=8",
             "representation.occ_grid_resolution=8", "representation.texture_size=16", "output.export_formats=[mesh]"],
    "gaussians": ["representation=gaussians", "representation.num_points=32", "representation.sh_degree=1",
                  "representation.sh_degree_interval=1", "representation.refine_start_step=0", "representation.refine_every=1",
                  "representation.grow_grad2d=1e-12", "output.export_formats=[gaussians]"],
}
LEGACY_RUN = ["experiment=analytic_3d", "strategy=none", "n_noises=2", "lookahead.steps=1", "cameras.eval_resolution=16",
              "output.eval_views=1", "output.turntable_frames=0", "output.video=false", *FAST, "steps=2"]

#: state_dict of each component as the code of commit ddb6421 built it after ``torch.manual_seed(0)``:
#: key -> (shape, dtype, float64 sum); the Gaussians' extra state lists its strategy state.
OLD_STATE = {
    'nerf': {
        'occ_ready': ((), 'bool', 0.0),
        'encoding.planes.0': ((3, 4, 33, 33), 'float32', 0.003997814246917031),
        'encoding.planes.1': ((3, 4, 49, 49), 'float32', 0.008231502942237512),
        'encoding.planes.2': ((3, 4, 73, 73), 'float32', -0.006585660449355046),
        'encoding.planes.3': ((3, 4, 109, 109), 'float32', 0.012648133687864271),
        'encoding.planes.4': ((3, 4, 163, 163), 'float32', 0.03133526403588196),
        'encoding.planes.5': ((3, 4, 244, 244), 'float32', -0.06845795292095902),
        'encoding.planes.6': ((3, 4, 365, 365), 'float32', 0.1081271616535155),
        'encoding.planes.7': ((3, 4, 548, 548), 'float32', -0.017496915449335182),
        'density_net.0.weight': ((64, 32), 'float32', 0.01281469968125748),
        'density_net.2.weight': ((1, 64), 'float32', -0.15720172226428986),
        'feature_net.0.weight': ((64, 32), 'float32', 0.17405759256507736),
        'feature_net.2.weight': ((3, 64), 'float32', -0.6542617231607437),
        'background_net.net.0.weight': ((16, 9), 'float32', 1.9974033838370815),
        'background_net.net.0.bias': ((16,), 'float32', -0.3150380093138665),
        'background_net.net.2.weight': ((16, 16), 'float32', -5.24365422129631),
        'background_net.net.2.bias': ((16,), 'float32', -0.410162091255188),
        'background_net.net.4.weight': ((3, 16), 'float32', 1.104420244693756),
        'background_net.net.4.bias': ((3,), 'float32', -0.20322564244270325),
        'estimator.resolution': ((3,), 'int32', 96.0),
        'estimator.aabbs': ((1, 6), 'float32', 0.0),
        'estimator.occs': ((32768,), 'float32', 0.0),
        'estimator.binaries': ((1, 32, 32, 32), 'bool', 0.0),
    },
    'nerf_hash': {
        'occ_ready': ((), 'bool', 0.0),
        'encoding.params': ((6358900, 2), 'float32', 0.07289062998674822),
        'density_net.0.weight': ((64, 32), 'float32', 0.4360330739291385),
        'density_net.2.weight': ((1, 64), 'float32', -0.03295852243900299),
        'feature_net.0.weight': ((64, 32), 'float32', -2.308066469820915),
        'feature_net.2.weight': ((3, 64), 'float32', -0.06796078383922577),
        'background_net.net.0.weight': ((16, 9), 'float32', 1.6065572966472246),
        'background_net.net.0.bias': ((16,), 'float32', -0.27524375915527344),
        'background_net.net.2.weight': ((16, 16), 'float32', -0.8455638587474823),
        'background_net.net.2.bias': ((16,), 'float32', -0.14953014254570007),
        'background_net.net.4.weight': ((3, 16), 'float32', -2.3692022264003754),
        'background_net.net.4.bias': ((3,), 'float32', -0.04374852776527405),
        'estimator.resolution': ((3,), 'int32', 96.0),
        'estimator.aabbs': ((1, 6), 'float32', 0.0),
        'estimator.occs': ((32768,), 'float32', 0.0),
        'estimator.binaries': ((1, 32, 32, 32), 'bool', 0.0),
    },
    'nerf_dense_solid_uniform': {
        'occ_ready': ((), 'bool', 0.0),
        'encoding.volumes.0': ((1, 4, 17, 17, 17), 'float32', 0.0074283104561914115),
        'encoding.volumes.1': ((1, 4, 25, 25, 25), 'float32', -0.0014631080036942024),
        'encoding.volumes.2': ((1, 4, 36, 36, 36), 'float32', 0.0031349476993360326),
        'encoding.volumes.3': ((1, 4, 53, 53, 53), 'float32', 0.03584950316171467),
        'density_net.0.weight': ((64, 16), 'float32', 2.789110094308853),
        'density_net.2.weight': ((1, 64), 'float32', 0.046503156423568726),
        'feature_net.0.weight': ((64, 16), 'float32', 6.728193998336792),
        'feature_net.2.weight': ((3, 64), 'float32', -0.4258353263139725),
    },
    'gaussians': {
        '_extra_state': {'grad2d': None, 'count': None, 'scene_scale': 1.0},
        'params.means': ((4096, 3), 'float32', 9.298416411278595),
        'params.opacities': ((4096,), 'float32', -8999.83203125),
        'params.quats': ((4096, 4), 'float32', 4096.0),
        'params.scales': ((4096, 3), 'float32', -40910.201354026794),
        'params.sh0': ((4096, 1, 3), 'float32', 0.0),
    },
    'gaussians_sh3_mcmc': {
        '_extra_state': {'binoms': ((51, 51), 'float32', 2251799803221869.0)},
        'params.means': ((4096, 3), 'float32', -1.934237001089059),
        'params.opacities': ((4096,), 'float32', -8999.83203125),
        'params.quats': ((4096, 4), 'float32', 4096.0),
        'params.scales': ((4096, 3), 'float32', -40899.02010726929),
        'params.sh0': ((4096, 1, 3), 'float32', 0.0),
        'params.shN': ((4096, 15, 3), 'float32', 0.0),
    },
    'latent_image': {
        'latents': ((2, 4, 64, 64), 'float32', 200.21339104044455),
    },
}

BUILDERS = {
    "nerf": lambda: NeRF(NeRFConfig()),
    "nerf_hash": lambda: NeRF(NeRFConfig(encoding="hash")),
    "nerf_dense_solid_uniform": lambda: NeRF(NeRFConfig(encoding="dense", n_levels=4, background="solid", estimator="uniform")),
    "gaussians": lambda: Gaussians(GaussiansConfig()),
    "gaussians_sh3_mcmc": lambda: Gaussians(GaussiansConfig(sh_degree=3, strategy="mcmc", seed=7)),
}


def _describe(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k] = (tuple(v.shape), str(v.dtype).replace("torch.", ""), float(v.double().sum()))
        else:  # the Gaussians' extra state
            out[k] = {kk: (tuple(vv.shape), str(vv.dtype).replace("torch.", ""), float(vv.double().sum()))
                      if isinstance(vv, torch.Tensor) else vv for kk, vv in v["strategy_state"].items()}
    return out


def _assert_same_state(got: dict, want: dict) -> None:
    assert list(got) == list(want)  # the same keys, in the same order
    for key, w in want.items():
        g = got[key]
        if isinstance(w, dict):
            assert list(g) == list(w), key
            g, w = list(g.values()), list(w.values())
            for a, b in zip(g, w):
                assert a == b if not isinstance(b, tuple) else (a[:2] == b[:2] and a[2] == pytest.approx(b[2], rel=1e-9, abs=1e-9)), key
            continue
        assert g[:2] == w[:2], key
        assert g[2] == pytest.approx(w[2], rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("case", list(BUILDERS))
def test_state_dict_keys_shapes_and_initial_values_are_those_of_the_old_code(case):
    torch.manual_seed(0)
    _assert_same_state(_describe(BUILDERS[case]().state_dict()), OLD_STATE[case])


def test_latent_image_state_is_that_of_the_old_code():
    latent = LatentImage(LatentImageConfig(batch_size=2))
    latent.setup(SimpleNamespace(latent_shape=(4, 64, 64), image_size=512), torch.device("cpu"), 3)
    _assert_same_state(_describe(latent.state_dict()), OLD_STATE["latent_image"])


@pytest.mark.parametrize("name", list(LEGACY_OVERRIDES))
def test_a_legacy_run_exports_the_scene_it_exported_at_the_end_of_training(tmp_path, name):
    """The saved config (every key, as the old code wrote it) goes through today's schema, the old checkpoint loads
    strictly, and the export is the one the run itself wrote at its last step."""
    run = tmp_path / name
    shutil.copytree(LEGACY / name, run)
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out), "--device", "cpu"]) == 0
    if name == "nerf":
        old, new = (trimesh.load(d / "mesh.ply", process=False) for d in (run / "export", out))
        assert len(old.vertices) > 50
        assert np.array_equal(old.vertices, new.vertices) and np.array_equal(old.faces, new.faces)
        assert np.array_equal(old.visual.vertex_colors, new.visual.vertex_colors)
        assert sorted(p.name for p in out.iterdir()) == sorted(["mesh.ply", "mesh.obj", "mesh_textured.obj", "mesh_textured.mtl",
                                                                "mesh_textured.png", "mesh.glb"])  # every format, by default
    else:
        old, new = (read_ply(d / "gaussians.ply") for d in (run / "export", out))
        assert len(old["x"]) == 64  # densified from 32 during the run: the shell takes the checkpoint's count
        assert list(old) == list(new) and all(np.array_equal(old[k], new[k]) for k in old)


@pytest.mark.parametrize("name", list(LEGACY_OVERRIDES))
def test_a_legacy_run_config_builds_todays_components(name):
    """Each group node of an old config_resolved.yaml is a valid schema today, equal to what the same overrides compose
    now (a resume compares the two), and builds its component."""
    saved = OmegaConf.load(LEGACY / name / "config_resolved.yaml")
    now = compose([*LEGACY_RUN, *LEGACY_OVERRIDES[name]])
    typed = {}
    for group, schema in (("representation", NeRFConfig if name == "nerf" else GaussiansConfig), ("cameras", CameraConfig)):
        typed[group] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), saved[group]))
        assert typed[group] == OmegaConf.to_object(now[group]), group
    rep = build(typed["representation"])
    assert isinstance(rep, NeRF if name == "nerf" else Gaussians) and rep.cfg is typed["representation"]
    assert len(build(typed["cameras"]).sample(torch.Generator().manual_seed(0))) == 4


def test_a_setting_added_after_the_run_takes_its_default_and_an_unknown_one_is_refused(tmp_path, capsys):
    """A saved config lacks the settings added since the run (their defaults apply); a setting no schema knows (a run of
    another version) is refused with the run folder and the fix, exit 2."""
    run = tmp_path / "nerf"
    shutil.copytree(LEGACY / "nerf", run)
    cfg = OmegaConf.load(run / "config_resolved.yaml")
    del cfg.representation["eval_chunk_samples"]
    OmegaConf.save(cfg, run / "config_resolved.yaml")
    assert main([str(run), "--format", "mesh", "--out", str(tmp_path / "out")]) == 0
    assert len(trimesh.load(tmp_path / "out" / "mesh.ply", process=False).vertices) > 50
    cfg.representation["marching_speed"] = 2
    OmegaConf.save(cfg, run / "config_resolved.yaml")
    assert main([str(run), "--format", "mesh", "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "has representation settings that NeRFConfig does not accept" in err and "marching_speed" in err
    assert "Fix: export with the rewardsds version the run was trained with" in err and not (tmp_path / "again").exists()
