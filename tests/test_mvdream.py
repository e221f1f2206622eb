"""MVDream prior: checkpoint conversion, joint attention, cameras and the x0-recon step against the parity
fixture of the original bytedance/MVDream code (../shared/fixtures/mvdream, seeded-random weights of a
reduced config with all 690 UNet keys; its README gives the weight recipe used below).

Everything here runs on the CPU in fp32 (the fixture's tolerances: atol 1e-4 on UNet outputs, rtol 1e-4
after the 50x CFG). GPU checks are in tests/test_mvdream_gpu.py.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import zlib
from pathlib import Path

import pytest
import torch

from rewardsds.cameras import orbit_cameras
from rewardsds.errors import ModelLoadError
from rewardsds.priors import mvdream as mv
from rewardsds.priors import mvdream_convert as mc

FIXTURE_DIR = Path(os.environ.get("REWARDSDS_FIXTURES", Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures")) / "mvdream"
ATOL_UNET = 1e-4  # fixture README: fp32 CPU, original vs 1 and 2 threads differ by 3e-6
RTOL_CFG = 1e-4  # after CFG 50 (relative to the tensor's max magnitude)


def _require_fixture() -> Path:
    if not (FIXTURE_DIR / "mvdream_fixture.safetensors").is_file():
        pytest.fail(f"MVDream parity fixture not found in {FIXTURE_DIR}; set REWARDSDS_FIXTURES=/path/to/fixtures")
    return FIXTURE_DIR


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fixture() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(_require_fixture() / "mvdream_fixture.safetensors"))


@pytest.fixture(scope="module")
def key_shapes() -> dict:
    return json.loads((_require_fixture() / "key_shapes.json").read_text())


def recipe_tensor(key: str, shape: list[int], kind: str) -> torch.Tensor:
    """The fixture README's weight recipe, seeded by the crc32 of the full ldm key."""
    g = torch.Generator("cpu").manual_seed(zlib.crc32(key.encode("utf-8")))
    r = torch.randn(shape, generator=g, dtype=torch.float32)
    if kind == "norm_weight":
        return 1 + 0.1 * r
    if kind == "bias":
        return 0.02 * r
    assert kind == "other", kind
    return r / math.sqrt(r.numel() // shape[0])


@pytest.fixture(scope="module")
def recipe_state_dict(key_shapes) -> dict[str, torch.Tensor]:
    """The reduced checkpoint in ldm names, plus the non-UNet keys a real checkpoint carries."""
    sd = {k: recipe_tensor(k, v["shape"], v["kind"]) for k, v in key_shapes["keys"].items()}
    for name in mc.SCHEDULE_BUFFERS:  # must be filtered out by the conversion
        sd[name] = torch.zeros(1000)
    sd["cond_stage_model.model.token_embedding.weight"] = torch.zeros(8, 4)
    return sd


@pytest.fixture(scope="module")
def reduced_params(key_shapes) -> dict:
    return key_shapes["reduced_unet_config"]


@pytest.fixture(scope="module")
def reduced_ckpt(tmp_path_factory, recipe_state_dict) -> Path:
    path = tmp_path_factory.mktemp("mvdream") / "reduced-4view.pt"
    torch.save(recipe_state_dict, path)
    return path


@pytest.fixture(scope="module")
def unet(reduced_ckpt, reduced_params):
    """The reduced UNet loaded through the real path: .pt file -> weights_only load -> conversion."""
    model = mc.unet_from_checkpoint(reduced_ckpt, reduced_params, dtype=torch.float32)
    mv.set_multiview_attention(model, 4)
    return model


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------------------- recipe / mapping
def test_recipe_reproduces_key_shapes_checksums(key_shapes, recipe_state_dict):
    keys = key_shapes["keys"]
    assert len(keys) == 690 == key_shapes["num_keys"]
    for k, info in keys.items():
        t = recipe_state_dict[k]
        assert list(t.shape) == info["shape"], k
        assert info["seed"] == zlib.crc32(k.encode())
        assert t.double().sum().item() == pytest.approx(info["sum"], rel=1e-4, abs=1e-4), k
        assert t.double().abs().sum().item() == pytest.approx(info["abs_sum"], rel=1e-5), k
        torch.testing.assert_close(t.flatten()[:3], torch.tensor(info["first"]), rtol=0, atol=1e-7)
    n = sum(recipe_state_dict[k].numel() for k in keys)
    assert n == key_shapes["num_params"] == 8_623_972


def test_inverse_key_mapping_matches_diffusers_converter(key_shapes, reduced_params):
    """ldm_unet_key (used for the missing/unexpected check) inverts diffusers' converter on all 690 keys."""
    model = mc.build_unet_on_meta(mc.unet_config_from_ldm(reduced_params))
    cfg = model.config
    with_attn = {i for i, t in enumerate(cfg.up_block_types) if "CrossAttn" in t}
    by_diffusers = {v["diffusers_key"]: k for k, v in key_shapes["keys"].items()}
    ours = {k: mc.UNET_PREFIX + mc.ldm_unet_key(k, cfg.layers_per_block, with_attn) for k in model.state_dict()}
    assert ours == by_diffusers


def test_full_size_mapping_covers_all_keys_on_meta():
    """All 690 keys of the real sd-v2.1-base-4view UNet (and its 248 VAE keys) map with equal shapes."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    full = json.loads((_require_fixture() / "full_unet_key_shapes.json").read_text())
    shapes = full["shapes"]
    ckpt = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    unet_keys = [k for k in shapes if k.startswith(mc.UNET_PREFIX)]
    assert len(unet_keys) == 690
    assert mc.read_ldm_unet_params(None) == full["unet_config"]

    model = mc.build_unet_on_meta(mc.unet_config_from_ldm(mc.SD21_4VIEW_UNET_PARAMS))
    assert sum(p.numel() for p in model.parameters()) == 867_572_164
    expected = mc.expected_ldm_unet_shapes(model)
    assert {mc.UNET_PREFIX + k: list(s) for k, s in expected.items()} == {k: shapes[k] for k in unet_keys}
    converted = mc.convert_unet_state_dict(ckpt, model, "full_unet_key_shapes.json")
    target = model.state_dict()
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)

    vae_cfg = {  # SD 2.1-base vae/config.json
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 256,
        "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": mc.SD21_4VIEW_SCALE_FACTOR,
    }
    with torch.device("meta"):
        vae = AutoencoderKL(**vae_cfg)
    vae_ckpt = {k: v for k, v in ckpt.items() if k.startswith(mc.VAE_PREFIX)}
    assert len(vae_ckpt) == 248
    vae_conv = convert_ldm_vae_checkpoint(vae_ckpt, vae_cfg)
    vae_target = vae.state_dict()
    assert set(vae_conv) == set(vae_target)
    assert all(vae_conv[k].shape == vae_target[k].shape for k in vae_target)


def test_unet_config_matches_spec(reduced_params):
    cfg = mc.unet_config_from_ldm(mc.SD21_4VIEW_UNET_PARAMS)
    assert cfg["sample_size"] == 32
    assert cfg["attention_head_dim"] == [5, 10, 20, 20]
    assert cfg["class_embed_type"] == "projection" and cfg["projection_class_embeddings_input_dim"] == 16
    assert cfg["cross_attention_dim"] == 1024 and cfg["use_linear_projection"] is True
    small = mc.unet_config_from_ldm(reduced_params)
    assert small["block_out_channels"] == [32, 64, 128, 128] and small["attention_head_dim"] == [4, 8, 16, 16]


# ----------------------------------------------------------------------------------------- UNet parity
def test_conversion_filters_buffers_and_installs_joint_attention(unet):
    procs = unet.attn_processors
    attn1 = [p for n, p in procs.items() if n.endswith("attn1.processor")]
    attn2 = [p for n, p in procs.items() if n.endswith("attn2.processor")]
    assert len(attn1) == 16 and all(isinstance(p, mv.MultiViewAttnProcessor) for p in attn1)
    assert len(attn2) == 16 and not any(isinstance(p, mv.MultiViewAttnProcessor) for p in attn2)
    assert mv.multiview_num_frames(unet) == 4
    assert not any(p.requires_grad for p in unet.parameters())


@pytest.mark.parametrize(
    ("key", "num_frames", "with_camera"),
    [("out", 4, True), ("out_nocam", 4, False), ("out_f1", 1, True)],
)
def test_unet_parity(unet, fixture, key, num_frames, with_camera):
    mv.set_multiview_attention(unet, num_frames)
    try:
        with torch.no_grad():
            out = mv.multiview_unet_forward(
                unet, fixture["x"], fixture["timesteps"], fixture["context"], fixture["camera"] if with_camera else None
            )
    finally:
        mv.set_multiview_attention(unet, 4)
    err = _max_err(out, fixture[key])
    assert err < ATOL_UNET, f"{key}: max abs error {err:.2e}"
    # The three outputs differ by 0.25-0.33, so matching one is not matching another by accident.
    others = [k for k in ("out", "out_nocam", "out_f1") if k != key]
    assert all(_max_err(out, fixture[o]) > 0.1 for o in others)


def test_joint_processor_with_one_frame_equals_stock_attention(unet, fixture):
    """House rule 11: the fused multi-view processor at num_frames=1 is diffusers' own AttnProcessor2_0."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    x, t, ctx, cam = fixture["x"][:2], fixture["timesteps"][:2], fixture["context"][:2], fixture["camera"][:2]
    procs = unet.attn_processors
    with torch.no_grad():
        mv.set_multiview_attention(unet, 1)
        ours = mv.multiview_unet_forward(unet, x, t, ctx, cam)
        unet.set_attn_processor(AttnProcessor2_0())
        stock = mv.multiview_unet_forward(unet, x, t, ctx, cam)
    unet.set_attn_processor(procs)
    mv.set_multiview_attention(unet, 4)
    assert _max_err(ours, stock) < 1e-5


def test_schedule_matches_fixture(fixture):
    ac = mv.ldm_linear_alphas_cumprod()
    torch.testing.assert_close(ac, fixture["sched/alphas_cumprod"], rtol=0, atol=1e-7)
    betas = 1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac.double()[:-1]]).float()
    torch.testing.assert_close(betas, fixture["sched/betas"], rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------------------- cameras
@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("cam/get_camera_e15_a0", dict(num_frames=4, elevation=15, azimuth_start=0)),
        ("cam/get_camera_e15_a90", dict(num_frames=4, elevation=15, azimuth_start=90)),
        ("cam/get_camera_e15_a0_opengl", dict(num_frames=4, elevation=15, azimuth_start=0, blender_coord=False)),
        ("cam/get_camera_e30_a0_n8", dict(num_frames=8, elevation=30, azimuth_start=0)),
    ],
)
def test_get_camera(fixture, key, kwargs):
    torch.testing.assert_close(mv.get_camera(**kwargs), fixture[key], rtol=0, atol=1e-6)


def test_fixture_batch_cameras_are_get_camera(fixture):
    cams = torch.cat([mv.get_camera(4, 15, 0), mv.get_camera(4, 15, 30)])
    torch.testing.assert_close(cams, fixture["camera"], rtol=0, atol=1e-6)


def test_normalize_camera_matches_and_does_not_mutate(fixture):
    c2w = fixture["cam/c2w_in"].clone()
    before = c2w.clone()
    torch.testing.assert_close(mv.normalize_camera(c2w), fixture["cam/normalized_torch"], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        mv.normalize_camera(c2w.double()), fixture["cam/normalized_numpy_f64"], rtol=0, atol=1e-12
    )
    assert torch.equal(c2w, before), "normalize_camera must not write into its argument"
    # the original's in-place write left its input normalised: the fixture input is the raw matrix
    assert not torch.allclose(c2w.reshape(-1, 16), fixture["cam/normalized_torch"])


def test_convert_opengl_to_blender(fixture):
    out = mv.convert_opengl_to_blender(fixture["cam/opengl_to_blender_in"])
    torch.testing.assert_close(out, fixture["cam/opengl_to_blender_out"], rtol=0, atol=1e-7)


def test_project_cameras_condition_like_mvdream_with_90_degree_offset():
    """A project camera at azimuth a is MVDream's get_camera azimuth a + 90 (any distance, any fovy)."""
    elev = torch.tensor([15.0, 15.0, 15.0, 15.0, 30.0, 30.0, 30.0, 30.0])
    azim = torch.tensor([0.0, 90.0, 180.0, 270.0, -20.0, 70.0, 160.0, 250.0])
    dist = torch.tensor([1.5, 2.0, 3.5, 0.8, 1.1, 2.2, 1.3, 1.7])
    cams = orbit_cameras(elev, azim, dist, torch.full((8,), 0.7), 64, 64)
    cond = mv.camera_condition(cams.c2w)
    ref = torch.cat([mv.get_camera(4, 15, 90), mv.get_camera(4, 30, 70)])
    torch.testing.assert_close(cond, ref, rtol=0, atol=2e-6)


def test_project_cameras_match_threestudio_inputs(fixture):
    """The fixture's threestudio-style cameras, rebuilt from (distance, elevation, azimuth) by
    rewardsds.cameras, give the same conditioning as the original normalize_camera on them."""
    dea = fixture["cam/c2w_dist_elev_azim"]
    cams = orbit_cameras(dea[:, 1], dea[:, 2], dea[:, 0], torch.full((len(dea),), 0.7), 64, 64)
    torch.testing.assert_close(cams.c2w, fixture["cam/c2w_in"], rtol=0, atol=1e-5)
    torch.testing.assert_close(mv.camera_condition(cams.c2w), fixture["cam/normalized_torch"], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- saved-once folder
def test_saved_folder_reloads_without_conversion(tmp_path, unet, fixture, reduced_ckpt):
    from diffusers import UNet2DConditionModel

    out = mc.save_converted(unet, tmp_path / "conv", source=str(reduced_ckpt))
    assert mc.is_converted_folder(out)
    info = json.loads((out / mc.CONVERSION_INFO).read_text())
    assert info["source"] == str(reduced_ckpt)
    reloaded = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    mv.set_multiview_attention(reloaded, 4)
    with torch.no_grad():
        a = mv.multiview_unet_forward(reloaded, fixture["x"], fixture["timesteps"], fixture["context"], fixture["camera"])
    assert _max_err(a, fixture["out"]) < ATOL_UNET


def test_safetensors_checkpoint_loads_like_pickle(tmp_path, recipe_state_dict, reduced_params, unet):
    from safetensors.torch import save_file

    path = tmp_path / "reduced.safetensors"
    save_file({k: v.contiguous() for k, v in recipe_state_dict.items()}, str(path))
    other = mc.unet_from_checkpoint(path, reduced_params)
    a, b = other.state_dict(), unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------- bad input
def test_missing_and_unexpected_unet_keys_are_listed(recipe_state_dict, reduced_params):
    sd = dict(recipe_state_dict)
    dropped = sorted(k for k in sd if k.startswith(mc.UNET_PREFIX + "output_blocks.5."))[:3]
    for k in dropped:
        del sd[k]
    sd[mc.UNET_PREFIX + "extra.0.weight"] = torch.zeros(1)
    sd[mc.UNET_PREFIX + "label_emb.0.0.weight"] = torch.zeros(1)
    with pytest.raises(ModelLoadError) as err:
        mc.unet_from_state_dict(sd, reduced_params, source="bad.pt")
    msg = str(err.value)
    assert "bad.pt" in msg and "missing UNet keys: 3 (" in msg and "unexpected UNet keys: 2 (" in msg
    assert all(k in msg for k in dropped)
    assert mc.UNET_PREFIX + "extra.0.weight" in msg and "Fix:" in msg


def test_many_missing_keys_are_truncated(recipe_state_dict, reduced_params):
    sd = {k: v for k, v in recipe_state_dict.items() if "middle_block" not in k}
    n = sum("middle_block" in k for k in recipe_state_dict)
    with pytest.raises(ModelLoadError, match=rf"missing UNet keys: {n} \(.*, \.\.\.\)"):
        mc.unet_from_state_dict(sd, reduced_params)


def test_wrong_shape_and_wrong_config_are_named(recipe_state_dict, reduced_params):
    sd = dict(recipe_state_dict)
    key = mc.UNET_PREFIX + "camera_embed.0.weight"
    sd[key] = torch.zeros(128, 12)
    with pytest.raises(ModelLoadError, match=r"wrong shape: 1 \(model\.diffusion_model\.camera_embed\.0\.weight \(128, 12\) != \(128, 16\)"):
        mc.unet_from_state_dict(sd, reduced_params)
    # the reduced weights against the full-size default config: every shape differs
    with pytest.raises(ModelLoadError, match="prior.original_config"):
        mc.unet_from_state_dict(recipe_state_dict, None)


def test_no_unet_keys_and_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no UNet weights under 'model.diffusion_model.'"):
        mc.unet_from_state_dict({"first_stage_model.x": torch.zeros(1)}, None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        mc.load_checkpoint(tmp_path / "nope.pt")


def test_pickle_with_objects_is_refused(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"model.diffusion_model.x": torch.zeros(1), "created": datetime.date(2024, 6, 1)}, path)
    with pytest.raises(ModelLoadError, match=r"(?s)weights_only=True.*Unsupported global.*safetensors"):
        mc.load_checkpoint(path)


def test_batch_not_multiple_of_num_frames(unet, fixture):
    with pytest.raises(ValueError, match="num_frames = 4"):
        mv.multiview_unet_forward(unet, fixture["x"][:6], fixture["timesteps"][:6], fixture["context"][:6],
                                  fixture["camera"][:6])


def test_camera_shape_is_checked():
    with pytest.raises(ValueError, match=r"\[b, 4, 4\]"):
        mv.camera_condition(torch.zeros(4, 16))
