"""The hash grid's Triton kernels against its PyTorch version, on the CPU through Triton's interpreter.

The interpreter needs TRITON_INTERPRET=1 before Triton is imported, so the kernels run in one subprocess
(tests/hash_grid_interpreter.py) whose JSON report these tests read; this process never sets the variable.
Covered: forward, backward to the table and to the points, the double backward of analytic normals (normals,
and the gradients of a loss on them with respect to the points, the table and an MLP on top), both launch
layouts (levels on the grid / looped per program), dense and hashed levels with collisions, 3 features
(an odd feature), a coarse-to-fine level mask, bf16 points and an fp16 table, and ray-ordered samples whose
table gradients sum runs of points in one cell before the atomics. The interpreter does not run
Triton's compiler, so each kernel is also compiled for sm_90 here (no GPU needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rewardsds.representations.config import NeRFConfig
from rewardsds.errors import ConfigError
from rewardsds.representations._grid import HashGridEncoding
from rewardsds.representations.nerf import NeRF

HERE = Path(__file__).resolve().parent
CASES = ["mixed", "mixed_loop_masked", "f3_loop", "rays", "rays_loop"]


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, str(HERE / "hash_grid_interpreter.py")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def close(entry: dict, rel: float = 1e-5) -> bool:
    return entry["err"] <= rel * entry["scale"] + 1e-6 and entry["scale"] > 0


def test_report_covers_every_case(report):
    assert set(CASES) <= set(report)
    assert report["mixed"]["n_dense"] == 2 and report["mixed"]["n_levels"] == 4  # dense and hashed levels
    assert report["f3_loop"]["n_dense"] == 1
    assert report["mixed_loop_masked"]["n_active"] == 2


@pytest.mark.parametrize("case", ["rays", "rays_loop"])
def test_ray_ordered_points_take_both_table_scatters(report, case):
    """Samples along rays: the coarse levels' blocks sum runs of points in one cell before their atomics, the fine
    levels' blocks add per point; the gradient tests below check both against PyTorch."""
    per_level = report[case]["merging_blocks"]  # [level][block]
    assert len(per_level) == 4 and len(per_level[0]) == 2
    assert all(per_level[0]) and not any(per_level[-1])


@pytest.mark.parametrize("case", CASES)
def test_forward_equals_pytorch(report, case):
    r = report[case]
    assert r["forward"]["err"] <= 1e-6 * r["forward"]["scale"], r["forward"]
    assert r["masked_levels_zero"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("key", ["dx", "dtable"])
def test_backward_equals_pytorch(report, case, key):
    assert close(report[case][key]), (case, key, report[case][key])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("key", ["normal", "dd_x", "dd_table", "dd_mlp"])
def test_double_backward_equals_pytorch(report, case, key):
    """autograd.grad(sigma, x, create_graph=True), then a loss on the normals: every gradient as PyTorch's."""
    assert close(report[case][key]), (case, key, report[case][key])


def test_reduced_precision_storage(report):
    assert report["bf16_points"]["dtype"] == "torch.float32" and report["bf16_points"]["forward"]["err"] == 0.0
    half = report["fp16_table"]
    assert half["dtype"] == "torch.float16" and close(half["forward"], rel=1e-3)


def test_position_gradient_alone_skips_the_table_scatter(report):
    """autograd.grad(y, x) (analytic normals) computes dx only; grad(y, table) dtable only; backward() both."""
    assert report["backward_flags"] == [[True, False], [False, True], [True, True]]


def test_released_points_skip_the_position_gradients(report):
    """Analytic normals as the NeRF takes them: after autograd.grad(sigma, x, create_graph=True) the points' leaf is
    released, so the loss's backward computes the table's gradient alone (the first backward) and no derivative
    for the points (the double backward); the table's gradient is the one computed with the points kept."""
    r = report["normals_release"]
    assert r["kept"]["backward"] == [[True, False], [True, True]] and r["kept"]["double_backward"] == [[True, True, True]]
    assert r["released"]["backward"] == [[True, False], [False, True]]
    assert r["released"]["double_backward"] == [[False, True, True]]
    assert r["kept"]["x_grad"] and not r["released"]["x_grad"]
    assert close(r["dtable"], rel=1e-6)


# ----------------------------------------------------------------------------------------- dispatch (no Triton)
def test_cpu_tensors_take_the_pytorch_path_unless_triton_is_forced():
    x = torch.rand(8, 3)
    assert not HashGridEncoding(2, 2, 10, 4, 2.0).uses_triton(x)
    assert not HashGridEncoding(2, 2, 10, 4, 2.0, backend="torch").uses_triton(x)
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ConfigError) as err:
            HashGridEncoding(2, 2, 10, 4, 2.0, backend="triton")(x)
        assert err.value.key == "representation.hash_backend" and "cpu" in str(err.value)


def test_unknown_backend_and_shrinking_levels_are_config_errors():
    with pytest.raises(ConfigError, match="representation.hash_backend"):
        HashGridEncoding(2, 2, 10, 4, 2.0, backend="tcnn")
    with pytest.raises(ConfigError, match="representation.per_level_scale"):
        HashGridEncoding(2, 2, 10, 4, 0.5)
    with pytest.raises(ConfigError, match="representation.hash_backend"):
        NeRFConfig(encoding="hash", hash_backend="cuda")


def test_float64_on_the_triton_path_is_a_config_error():
    from rewardsds.representations._hash_triton import hash_grid_triton

    enc = HashGridEncoding(2, 2, 10, 4, 2.0)
    with pytest.raises(ConfigError, match="hash_backend=torch"):
        hash_grid_triton(torch.rand(4, 3, dtype=torch.float64), enc.params, enc.layout(torch.device("cpu")), 2)


def test_active_levels_are_the_prefix_the_mask_keeps():
    enc = HashGridEncoding(4, 2, 10, 4, 2.0)  # resolutions 4, 8, 16, 32
    for max_res, n in [(None, 4), (100.0, 4), (16.0, 3), (8.0, 2), (1.0, 1)]:
        mask = enc.level_mask(max_res, torch.device("cpu"))
        assert enc.n_active_levels(max_res) == n
        assert mask is None and n == 4 or mask.tolist() == [1.0] * n + [0.0] * (4 - n)


def test_nerf_encoding_sizes_default_per_encoding_and_backend_reaches_the_grid():
    h = NeRF(NeRFConfig(encoding="hash", hash_backend="torch", estimator="uniform"))
    assert isinstance(h.encoding, HashGridEncoding) and h.encoding.backend == "torch"
    assert (h.encoding.n_levels, h.encoding.n_features_per_level) == (16, 2)
    assert h.encoding.resolutions[0] == 16 and abs(h.encoding.resolutions[-1] - 4096) < 1e-3
    t = NeRF(NeRFConfig(estimator="uniform"))
    assert (len(t.encoding.planes), t.encoding.n_features_per_level, t.encoding.resolutions[0]) == (8, 4, 32)
    from rewardsds.representations.config import encoding_sizes

    # encoding=dense alone took the triplane's sizes before (32 -> 546 per axis), which its own check refused
    assert encoding_sizes(NeRFConfig(encoding="dense"))["base_resolution"] == 16
    small = NeRF(NeRFConfig(encoding="hash", n_levels=3, base_resolution=8, estimator="uniform"))
    assert small.encoding.n_levels == 3 and small.encoding.resolutions[0] == 8 and small.encoding.n_features_per_level == 2


def test_paper_experiments_use_the_paper_hash_grid_and_the_cpu_demo_the_triplane():
    from omegaconf import OmegaConf

    from conftest import compose
    from rewardsds.representations.config import encoding_sizes
    from rewardsds.schema import build

    for exp in ("mvdream_nerf", "dreamfusion_nerf"):
        rep = OmegaConf.to_object(compose([f"experiment={exp}", "prompt=a cat"]).representation)
        assert rep.encoding.value == "hash" and rep.hash_backend.value == "auto" and rep.log2_hashmap_size == 19, exp
        assert encoding_sizes(rep) == {"n_levels": 16, "n_features_per_level": 2, "base_resolution": 16,
                                       "per_level_scale": 1.447269237440378}, exp
    tri = compose(["experiment=mvdream_nerf", "prompt=a cat", "representation.encoding=triplane"]).representation
    assert encoding_sizes(OmegaConf.to_object(tri))["n_levels"] == 8  # one override: the triplane's own sizes
    assert compose(["experiment=analytic_3d"]).representation.encoding == "triplane"
    tri.num_samples_per_ray = 8
    assert isinstance(build(OmegaConf.to_object(tri)).encoding, type(NeRF(NeRFConfig(estimator="uniform")).encoding))


# ----------------------------------------------------------------------------------------- compiled for a GPU
@pytest.mark.parametrize("kernel,reduce", [("forward", None), ("backward", False), ("backward", True),
                                           ("double_backward", False), ("double_backward", True)])
def test_kernels_compile_for_hopper(kernel, reduce):
    """The interpreter never runs Triton's compiler: compile each kernel's most general variant for sm_90 here
    (no GPU needed). A kernel with one point per lane needs no shared memory (a [points, features] tile made
    Triton shuffle every per-point value through it); the run sums of the table scatters need only the scans'
    few words per warp."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rewardsds.representations import _hash_triton as H

    fn = {"forward": H._forward_kernel, "backward": H._backward_kernel, "double_backward": H._double_backward_kernel}[kernel]
    flags = {"forward": {"PACKED_OUT": True}, "backward": {"NEED_DT": True, "NEED_DX": True, "REDUCE": reduce},
             "double_backward": {"PACKED_OUT": True, "HAS_U": True, "HAS_V": True, "NEED_GG": True, "NEED_GT": True,
                                 "NEED_GX": True, "REDUCE": reduce}}[kernel]
    constexprs = {"F": 2, "PACKED": True, "BLOCK": 256, "LEVEL_LOOP": False, **flags}
    pointers = {"table_ptr": "*i64", "out_ptr": "*i64", "gg_ptr": "*i64", "offsets_ptr": "*i32", "sides_ptr": "*i32"}
    signature = {a: "constexpr" if a in constexprs else pointers.get(a, "*fp32" if a.endswith("_ptr") else "i32")
                 for a in fn.arg_names}
    compiled = triton_compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4, "enable_fp_fusion": False})
    ptx = compiled.asm["ptx"]
    if reduce:
        assert 0 < compiled.metadata.shared <= 1024 and "shfl.sync.up" in ptx  # the segmented scans
    else:
        assert compiled.metadata.shared == 0 and "shfl" not in ptx
    assert "fma.rn.f32" not in ptx  # no contraction: x * s + 0.5 rounds as the PyTorch reference's two operations
    assert "ld.global.b64" in ptx  # a corner's two fp32 features in one load
