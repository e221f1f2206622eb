"""Compile by default on CUDA (never on CPU), the persistent compile cache, and the float8 lookahead's checks.

Nothing here compiles: torch.compile is replaced by a recorder where the order of operations is the point
(the cache folder must be in the environment before the first compile). The compiled and float8 paths
themselves run in tests/test_fast_path_gpu.py.
"""

import copy
import os
import sys

import pytest
import torch

from conftest import compose
from rewardsds.config import validate
from rewardsds.errors import ConfigError
from rewardsds.priors import compiled
from rewardsds.priors.compiled import CompiledModule, configure_compile_cache, default_compile_cache, resolve_compile
from rewardsds.priors.config import SDPriorConfig, check_compile_mode, normalize_compile
from rewardsds.priors.quantized import check_float8_support
from rewardsds.schema import build
from rewardsds.strategies.config import MinMaxStrategyConfig
from rewardsds.losses.config import SDSLossConfig
from rewardsds.losses.sds import SDSLoss
from step_helpers import make_engine, step_loss


@pytest.fixture
def clean_cache_env(monkeypatch):
    """Undo any change to the inductor cache variable and the cache flags."""
    import torch._functorch.config as fc
    import torch._inductor.config as ic

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    saved = ic.fx_graph_cache, fc.enable_autograd_cache  # config modules: restored by assignment, not monkeypatch
    yield monkeypatch
    ic.fx_graph_cache, fc.enable_autograd_cache = saved


# ----------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("value, device, expected", [
    ("auto", "cuda", True), ("auto", "cpu", False), (True, "cpu", True), (False, "cuda", False), ("false", "cuda", False),
    ("true", "cpu", True), ("AUTO", "cuda", True),
])
def test_compile_resolution(value, device, expected):
    assert resolve_compile(normalize_compile(value), torch.device(device)) is expected


def test_compile_setting_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"prior.compile.*use auto"):
        normalize_compile("sometimes")
    with pytest.raises(ConfigError, match=r"prior.compile_mode.*prior.compile=auto"):
        check_compile_mode("max-autotune", False)
    assert check_compile_mode("reduce-overhead", False) == "reduce-overhead"  # the schema default never errors
    with pytest.raises(ConfigError, match=r"prior.compile_mode.*no effect"):
        check_compile_mode("default", False)
    assert check_compile_mode("max-autotune", "auto") == "max-autotune"


def test_default_config_compiles_on_cuda_only(tiny_sd):
    cfg = compose(["prompt=a cat", "prior=sd", f"prior.pretrained={tiny_sd}", "prior.local_files_only=true"])
    typed = validate(cfg)
    assert typed.prior.compile == "auto" and typed.prior.compile_mode == "reduce-overhead" and typed.prior.compile_cache == "auto"
    assert typed.prior.lookahead_quantize.value == "none"
    prior = build(typed.prior).to("cpu")
    assert prior._unet_call is prior.unet  # CPU: eager, nothing compiled
    assert prior.compiles_on("cuda") and not prior.compiles_on("cpu")
    assert prior.ranking_prior() is prior
    off = build(validate(compose(["prompt=a cat", "prior=sd", f"prior.pretrained={tiny_sd}", "prior.compile=false"])).prior)
    assert not off.compiles_on("cuda")
    # MVDream takes the same fast path: its batched candidates and decodes compiled with CUDA graphs on CUDA
    mv = validate(compose(["prompt=a cat", "prior=mvdream", "representation=nerf"])).prior
    assert (mv.compile, mv.compile_mode, mv.compile_cache) == ("auto", "reduce-overhead", "auto")


def test_explicit_compile_on_cpu_warns_and_stays_eager(tiny_sd, caplog):
    from rewardsds.priors.sd import StableDiffusionPrior

    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), compile=True, local_files_only=True))
    with caplog.at_level("WARNING"):
        p.to("cpu")
    assert p._unet_call is p.unet and p._decode_call == p._decode_eager
    assert caplog.text.count("stay eager") == 1  # one warning for the placement, not one per compiled module


# ----------------------------------------------------------------------------------------- cache
def test_cache_folder_choice(clean_cache_env, tmp_path):
    import torch._functorch.config as fc
    import torch._inductor.config as ic

    m = clean_cache_env
    m.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache() == tmp_path / "xdg" / "rewardsds" / "torchinductor"
    ic.fx_graph_cache = False
    fc.enable_autograd_cache = False
    assert configure_compile_cache("auto") == tmp_path / "xdg" / "rewardsds" / "torchinductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "xdg" / "rewardsds" / "torchinductor").resolve())
    assert ic.fx_graph_cache and fc.enable_autograd_cache  # both caches switched on
    m.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "users_own"))
    assert configure_compile_cache("auto") == tmp_path / "users_own"  # a user's variable wins with auto
    assert configure_compile_cache(str(tmp_path / "explicit")) == tmp_path / "explicit"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "explicit").resolve())
    assert configure_compile_cache("torch") is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "explicit").resolve())  # left as it was
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="prior.compile_cache"):
        configure_compile_cache(str(tmp_path / "a_file" / "sub"))


def test_cache_is_configured_before_the_first_compile(clean_cache_env, tmp_path, tiny_sd):
    """The prior's to() points the cache at prior.compile_cache before torch.compile runs (recorded, not run)."""
    from rewardsds.priors.sd import StableDiffusionPrior

    seen = []

    def recording_compile(module, **kw):
        seen.append((os.environ.get("TORCHINDUCTOR_CACHE_DIR"), kw))
        return module

    clean_cache_env.setattr(compiled.torch, "compile", recording_compile)
    CompiledModule(torch.nn.Linear(2, 2), "default", cache=str(tmp_path / "c1"))
    assert seen[-1][0] == str((tmp_path / "c1").resolve())

    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, compile_cache=str(tmp_path / "c2")))
    clean_cache_env.setattr(StableDiffusionPrior, "compiles_on", lambda self, device: True)
    p.to("cpu")
    assert isinstance(p._unet_call, CompiledModule) and p._unet_call.cudagraphs
    assert seen[-2][0] == seen[-1][0] == str((tmp_path / "c2").resolve())
    assert seen[-2][1] == {"mode": "reduce-overhead", "dynamic": False}  # the UNet: static shapes under CUDA graphs
    # the decoder: Inductor without CUDA graphs (no graph pool holds its activations), one graph per batch
    assert seen[-1][1] == {"mode": None, "dynamic": False}
    assert isinstance(p._decode_call, CompiledModule) and not p._decode_call.cudagraphs and p._decode_call.static
    # the system moves the prior again in prepare(): that must not build (and compile) a second wrapper
    call, decode, compiles = p._unet_call, p._decode_call, len(seen)
    p.to("cpu")
    assert p._unet_call is call and p._decode_call is decode and len(seen) == compiles


def test_candidates_decode_without_gradient_goes_through_the_compiled_decoder(clean_cache_env, tmp_path, tiny_sd):
    """The candidates' decode (no gradient) calls the compiled decoder; a decode with a gradient (reward
    feedback through the image) and every other decode (logging, exports) stay eager; all give the eager
    decoder's images."""
    from rewardsds.priors.sd import StableDiffusionPrior

    calls = []

    def recording_compile(fn, **kw):
        def run(z):
            calls.append(z.shape[0])
            return fn(z)
        return run

    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, compile_cache=str(tmp_path / "c")))
    eager = p.to("cpu")
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = eager.decode_latents(z)
    clean_cache_env.setattr(compiled.torch, "compile", recording_compile)
    clean_cache_env.setattr(StableDiffusionPrior, "compiles_on", lambda self, device: True)
    p._placed = None
    p.to("cpu")
    with torch.no_grad():
        got = p.decode_candidates(z)
        logged = p.decode_latents(z[:1])
    assert calls == [3] and torch.equal(got, want)  # only the candidates' decode was compiled
    assert torch.allclose(logged, want[:1], atol=1e-5)  # eager, one image
    zg = z.clone().requires_grad_(True)
    img = p.decode_candidates(zg)
    assert calls == [3] and img.requires_grad  # with a gradient: eager, no compiled call
    assert torch.allclose(img.detach(), want, atol=1e-6)


# ----------------------------------------------------------------------------------------- float8 lookahead
def test_lookahead_quantize_option_checks(tiny_sd, monkeypatch):
    from rewardsds.priors.sd import StableDiffusionPrior

    with pytest.raises(ConfigError, match="prior.lookahead_quantize"):
        SDPriorConfig(pretrained=str(tiny_sd), lookahead_quantize="int4")
    with pytest.raises(ConfigError, match=r"prior.lookahead_quantize.*runs on cpu"):
        check_float8_support("cpu", torch.bfloat16)
    with pytest.raises(ConfigError, match=r"runs on cpu.*lookahead_quantize=none"):
        StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, lookahead_quantize="float8")).to("cpu")
    # a GPU without float8 tensor cores (an A100 is 8.0), a float32 prior, a missing torchao
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match=r"compute capability >= 8.9.*A100.*8.0"):
        check_float8_support("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(ConfigError, match="prior.dtype=bf16"):
        check_float8_support("cuda", torch.float32)
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    with pytest.raises(ConfigError, match=r"needs torchao.*rewardsds\[float8\]"):
        check_float8_support("cuda", torch.bfloat16)


def test_lookahead_ranking_calls_go_to_the_ranking_view_only(tiny_sd, monkeypatch):
    """Routing, on CPU: with the float8 view replaced by a plain copy of the UNet (float8 needs sm89), the
    lookahead's calls after the shared first one use the view; the prediction at t uses the prior's UNet."""
    from rewardsds.priors import sd as sd_module
    from rewardsds.priors.sd import StableDiffusionPrior
    from rewardsds.rewards.analytic import AnalyticReward
    from rewardsds.rewards.config import AnalyticRewardConfig
    from rewardsds.strategies import MinMaxStrategy

    monkeypatch.setattr(sd_module, "check_float8_support", lambda device, dtype: None)
    monkeypatch.setattr(sd_module, "float8_copy", lambda unet: copy.deepcopy(unet))
    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, lookahead_quantize="float8")).to("cpu")
    view = p.ranking_prior()
    assert view is not p and view.unet_float8 is not p.unet and view._unet_call is view.unet_float8
    assert view.text_cond(["x"], "") is p.text_cond(["x"], "")  # shares the text cache
    calls = {"main": [], "view": []}
    p.unet.register_forward_hook(lambda m, a, k: calls["main"].append(a[0].shape[0]))
    view.unet_float8.register_forward_hook(lambda m, a, k: calls["view"].append(a[0].shape[0]))
    eng = make_engine(p, AnalyticReward(AnalyticRewardConfig(preferred=["red"], image_size=16)), steps=6, start="exact_t", seed=0)
    c = step_loss(SDSLoss(SDSLossConfig()), p, eng, torch.randn(1, 4, 8, 8), 700, 4, MinMaxStrategy(MinMaxStrategyConfig(n_max=1, n_min=1)),
                  step=0, prompt="a red disk").candidates
    # t = 700 on the 6-point leading grid {831, 665, 499, 333, 167, 1}: the call at t (shared, the prior's
    # UNet) then 5 lookahead calls, each on 4 candidates x the CFG pair, on the ranking view
    assert calls["main"] == [8] and calls["view"] == [8] * 5
    assert c.evals == 8 * 6


def test_tiny_candidates_decode_needs_a_tiny_decoder():
    """A prior without a tiny decoder refuses lookahead.decode=tiny with the key, the value and the fix."""
    from rewardsds.priors.analytic import AnalyticPrior
    from rewardsds.priors.config import AnalyticPriorConfig

    prior = AnalyticPrior(AnalyticPriorConfig())
    z = torch.zeros(2, *prior.latent_shape)
    assert torch.equal(prior.decode_candidates(z), prior.decode_latents(z))
    with pytest.raises(ConfigError, match=r"lookahead.decode.*tiny.*AnalyticPrior.*lookahead.decode=full"):
        prior.decode_candidates(z, tiny=True)


def test_chunk_size_probe_never_compiles_the_unet_for_its_own_shape(clean_cache_env, tmp_path, tiny_sd):
    """The automatic chunk size measures one call at a CFG pair (batch 2), a shape the step never uses: a compiled
    UNet must run it eagerly, or every CUDA run compiles (and keeps a CUDA graph of) the full UNet once more."""
    import torch._dynamo.testing as dynamo_testing

    from rewardsds.candidates import auto_chunk_size
    from rewardsds.priors.sd import StableDiffusionPrior

    counter = dynamo_testing.CompileCounter()
    real_compile = torch.compile
    clean_cache_env.setattr(compiled.torch, "compile", lambda module, **kw: real_compile(module, backend=counter, dynamic=kw.get("dynamic")))
    clean_cache_env.setattr(StableDiffusionPrior, "compiles_on", lambda self, device: True)
    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, compile_cache=str(tmp_path / "c"))).to("cpu")
    assert isinstance(p._unet_call, CompiledModule)
    # CUDA memory accounting of the probe, scripted: 500 bytes per input, 100 kB free
    mem = {"allocated": 1000}
    for name, fn in {"synchronize": lambda *a: None, "reset_peak_memory_stats": lambda *a: None,
                     "memory_allocated": lambda *a: mem["allocated"], "max_memory_allocated": lambda *a: mem["allocated"] + 2 * 500,
                     "mem_get_info": lambda *a: (100_000, 200_000)}.items():
        clean_cache_env.setattr(torch.cuda, name, fn)
    torch._dynamo.reset()
    example = torch.randn(1, 4, 8, 8)
    assert auto_chunk_size(p, example) == int(0.7 * 100_000 // 500) // 2 * 2
    assert counter.frame_count == 0  # the probe ran eagerly
    emb = p.encode_text(["a cat"] * 4)
    with torch.no_grad():
        p.predict_noise(torch.randn(4, 4, 8, 8), torch.full((4,), 500), emb)
    assert counter.frame_count == 1  # the step's own calls do compile
