"""The Stable Diffusion prior through the real from_pretrained path, with tiny random-init weights."""

import contextlib
import logging

import pytest
import torch

from conftest import CONF_DIR, FAST, compose
from rewardsds.errors import ModelLoadError
from rewardsds.priors.config import SDPriorConfig
from rewardsds.priors.sd import StableDiffusionPrior, resolve_dtype
from rewardsds.schema import DType


def test_loads_by_path_and_shapes(tiny_sd_prior):
    p = tiny_sd_prior
    assert p.latent_shape == (4, 8, 8) and p.image_size == 16
    assert p.alphas_cumprod.dtype == torch.float32 and p.alphas_cumprod.shape == (1000,)
    # frozen: nothing requires grad
    assert not any(q.requires_grad for m in p._modules() for q in m.parameters())


def test_text_cache_and_negative_prompt(tiny_sd_prior):
    p = tiny_sd_prior
    p.clear_text_cache()
    a = p.text_cond(["the cat", "an onion"], "blurry")
    assert set(p._text_cache) == {"the cat", "an onion", "blurry"}
    b = p.text_cond(["the cat"], "blurry")
    assert torch.equal(a.cond[0], b.cond[0]) and torch.equal(a.uncond[0], b.uncond[0])
    assert not torch.allclose(a.cond[0], a.uncond[0])


def test_vae_round_trip_and_gradient(tiny_sd_prior):
    p = tiny_sd_prior
    img = torch.rand(2, 3, 20, 20, requires_grad=True)  # resized to 16 inside
    z = p.encode_images(img)
    assert z.shape == (2, 4, 8, 8)
    z.sum().backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
    out = p.decode_latents(z.detach())
    assert out.shape == (2, 3, 16, 16) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_v_prediction_is_converted_to_epsilon(tiny_sd_v):
    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd_v), dtype="fp32")).to("cpu")
    assert p.prediction_type == "v_prediction"
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([400])
    e = p.text_cond(["the cat"], "").cond
    v = p.unet(x, t, encoder_hidden_states=e).sample
    a, s = p.alpha_sigma(t)
    assert torch.allclose(p.predict_noise(x, t, e), a * v + s * x, atol=1e-6)


def test_missing_model_error_is_actionable(tmp_path):
    with pytest.raises(ModelLoadError) as err:  # a Hub id that is not in the cache (offline)
        StableDiffusionPrior(SDPriorConfig(pretrained="no-such-org/nope", local_files_only=True))
    msg = str(err.value)
    assert "nope" in msg and "prior.pretrained=/path/to/local/folder" in msg and "HF_HUB_OFFLINE=1" in msg and "experiment=demo" in msg
    with pytest.raises(ModelLoadError) as err:  # a local folder that does not exist: no Hub advice
        StableDiffusionPrior(SDPriorConfig(pretrained=str(tmp_path / "nope"), local_files_only=True))
    msg = str(err.value)
    assert "(no such file or folder on this machine: a local path, not a Hub id)" in msg and "HF_HUB_OFFLINE" not in msg
    assert "prior.pretrained=/path/to/local/folder" in msg and "experiment=demo" in msg


def test_dtype_resolution(monkeypatch):
    from rewardsds.utils.dtypes import grad_half

    assert resolve_dtype(DType.auto, "cpu") == torch.float32
    assert resolve_dtype(DType.auto, "cpu", half=torch.float16) == torch.float32  # auto stays fp32 off CUDA
    assert resolve_dtype(DType.bf16, "cpu") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(DType.auto, "cuda") == torch.bfloat16 and resolve_dtype(DType.auto, "cuda", half=torch.float16) == torch.float16
    assert resolve_dtype(DType.fp32, "cuda", half=torch.float16) == torch.float32  # a named dtype is that dtype
    assert grad_half(torch.float16, "cuda") == torch.bfloat16 and grad_half(torch.float32, "cuda") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert resolve_dtype(DType.auto, "cuda") == torch.float16 and grad_half(torch.float16, "cuda") == torch.float16
    assert grad_half(torch.float16, "cpu") == torch.bfloat16


def test_auto_half_is_fp16_for_sd_and_mvdream_bf16_for_float8(tiny_sd):
    """prior.dtype=auto on CUDA: fp16 for the SD prior (its measured selection agreement) and for MVDream (whose bf16
    missed the agreement bar), bf16 where a float8 lookahead quantises the UNet (torchao's bf16 recipe)."""
    from rewardsds.priors.mvdream import MVDreamPrior

    sd = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True))
    f8 = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, lookahead_quantize="float8"))
    assert (sd.auto_half(), f8.auto_half(), MVDreamPrior.AUTO_HALF) == (torch.float16, torch.bfloat16, torch.float16)


def test_an_fp16_prior_gives_a_bf16_copy_for_gradients(tiny_sd):
    """VSD's LoRA trains through a copy of the UNet: beside an fp16 prior the copy is bf16 (fp16's range would underflow
    its backward pass without loss scaling); the prior's own UNet stays fp16 and untouched."""
    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, dtype="fp16")).to("cpu")
    assert p.dtype == torch.float16 and p.grad_dtype == torch.bfloat16
    copy = p.trainable_copy()
    assert next(copy.parameters()).dtype == torch.bfloat16 and next(p.unet.parameters()).dtype == torch.float16
    assert not any(q.requires_grad for q in copy.parameters())
    p32 = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, dtype="fp32")).to("cpu")
    assert next(p32.trainable_copy().parameters()).dtype == torch.float32


def test_casting_a_module_that_keeps_nothing_in_fp32_logs_nothing(tiny_sd, caplog):
    """diffusers' ModelMixin.to(dtype) logs "should be kept in float32: []" on every cast, also with an empty keep-list
    (VSD's copy, the MVDream converter, the test models' writer printed it); that record is dropped, a list that names
    modules still shows."""
    from rewardsds.utils.quiet import DIFFUSERS_MODELING_LOGGER

    p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), local_files_only=True, dtype="fp16")).to("cpu")
    with caplog.at_level(logging.WARNING, logger=DIFFUSERS_MODELING_LOGGER):
        p.trainable_copy()
        assert not [r for r in caplog.records if "kept in float32" in r.getMessage()]
        p.vae._keep_in_fp32_modules = ["decoder"]
        p.vae.to(torch.float32)
    assert [r.getMessage().split(".")[0] for r in caplog.records] == [
        "There are modules in AutoencoderKL that should be kept in float32: ['decoder']"]


def test_compiling_a_bf16_diffusers_block_says_nothing_of_its_version_check():
    """diffusers' up-sampling block asks ``is_torch_version`` (an lru_cache) in bf16, and Dynamo warned about tracing
    through the cache at every compile of a bf16 UNet or VAE. After a compiled prior's set-up the warning is ignored;
    the same warning about another function still shows."""
    import warnings

    from diffusers.models.upsampling import Upsample2D
    from torch._dynamo.utils import warn_once_cache

    block = Upsample2D(4, use_conv=True).to(torch.bfloat16)
    x = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)

    def compiled_warnings(quiet: bool) -> list[str]:
        torch._dynamo.reset()
        warn_once_cache.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if quiet:
                from rewardsds.priors.compiled import CompiledModule

                CompiledModule(block, mode="default", cache="torch")  # what every compiled prior module does first
            torch.compile(block, backend="eager")(x)
        return [str(w.message) for w in caught if "lru_cache" in str(w.message)]

    plain = compiled_warnings(quiet=False)
    assert plain and all("is_torch_version" in m for m in plain)  # what torch says without the filter
    assert compiled_warnings(quiet=True) == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from rewardsds.utils.quiet import quiet_dynamo_version_checks

        quiet_dynamo_version_checks()
        warnings.warn(plain[0].replace("is_torch_version", "other_check"), UserWarning)
    assert len(caught) == 1


def test_loading_by_hub_id_does_not_warn_about_an_argument_diffusers_passes():
    """diffusers' from_pretrained hands hf_hub_download ``local_dir_use_symlinks``, which huggingface_hub warns is ignored:
    the prior's loader (``load_pretrained``, SD's and MVDream's) drops that one warning (the real lookup of a Hub id not in
    the cache, warnings always shown; the control removes the loader's filter)."""
    import contextlib
    import warnings
    from unittest import mock

    def warnings_of_a_lookup(quiet: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ModelLoadError), (contextlib.nullcontext() if quiet else
                                                 mock.patch("rewardsds.priors.sd.quiet_hub_symlink_argument")):
                StableDiffusionPrior(SDPriorConfig(pretrained="no-such-org/nope", local_files_only=True))
            warnings.warn("a different UserWarning", UserWarning)  # others still show
        return [str(w.message) for w in caught]

    plain = warnings_of_a_lookup(quiet=False)
    assert any("local_dir_use_symlinks" in m for m in plain), plain  # what huggingface_hub says without the filter
    assert warnings_of_a_lookup(quiet=True) == ["a different UserWarning"]


def test_rewardsds_three_steps_on_tiny_sd(tiny_sd, tmp_path):
    """3 optimisation steps of RewardSDS through the user's config path (prior.pretrained=<folder>)."""
    from rewardsds.train import train

    cfg = compose([f"prior.pretrained={tiny_sd}", "prompt=a photo of the cat", "steps=3", "n_noises=4", "reward=analytic",
                   "reward.image_size=16", "lookahead.steps=4", *FAST])
    m = train(cfg, tmp_path / "run")
    assert m["status"] == "complete" and m["iterations"] == 3
    assert (tmp_path / "run" / "final" / "image_000.png").is_file()
    # 4 candidates x (pair at t + lookahead calls below t on a 4-point grid), CFG pairs counted twice
    assert m["evals_per_step_mean"] >= 2 * 4
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys == ["representation.latents"], keys  # frozen prior weights never enter checkpoints
    assert ckpt["rewardsds"]["iteration"] == 3


def test_fp32_ranking_through_the_config_path_remakes_the_call_at_t_of_small_t_steps(tiny_sd, tmp_path):
    """A bf16 prior with lookahead.fp32_below through train(): the engine asks for the fp32 view before the run places
    the prior, and each step below the threshold (3 of seed 0's first 6 timesteps: 118, 42, 99) makes its call at t
    again on it: 2 N more evaluations there, nothing more elsewhere."""
    from rewardsds.train import train

    base = [f"prior.pretrained={tiny_sd}", "prior.dtype=bf16", "prompt=a photo of the cat", "steps=6", "n_noises=4", "reward=analytic",
            "reward.image_size=16", "lookahead.steps=4", *FAST]
    plain = train(compose(base), tmp_path / "plain")
    ranked = train(compose([*base, "lookahead.fp32_below=250"]), tmp_path / "fp32")
    assert plain["status"] == ranked["status"] == "complete"
    assert ranked["evals_per_step_mean"] == pytest.approx(plain["evals_per_step_mean"] + 2 * 4 * 3 / 6)


def test_long_prompt_truncation_is_reported_once(tiny_sd_prior, caplog):
    """The text encoder reads model_max_length tokens; the rest is dropped (as the reference does), with one warning."""
    p = tiny_sd_prior
    kept = p.tokenizer.model_max_length - 2  # start and end tokens
    prompt = "a zebra crossing a river at dawn"
    ids = p.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) > kept
    dropped = p.tokenizer.decode(ids[kept:]).strip()
    with caplog.at_level(logging.WARNING, logger="rewardsds"):
        p.text_cond([prompt] * 2, "")
        p.encode_text([prompt, "a zebra"])
        p._encode_text_uncached([prompt])  # a second encoder call (e.g. after the cache was cleared) is not reported again
    notes = [r.getMessage() for r in caplog.records if "tokens long" in r.getMessage()]
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"prompt {prompt!r} is {len(ids)} tokens long") and f"keeps the first {kept}" in notes[0], notes[0]
    assert f"drops {dropped!r}" in notes[0], notes[0]


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "prior").glob("*.yaml")))
def test_every_prior_option_builds_a_class_that_takes_its_schema(option):
    """Each conf/prior option extends one prior schema, and its _target_ class takes that schema as its one
    constructor argument (so the option's validated settings are exactly what the class reads)."""
    import importlib
    import inspect
    import typing

    import yaml
    from omegaconf import OmegaConf

    from rewardsds.config import GROUP_SCHEMAS

    declared = yaml.safe_load((CONF_DIR / "prior" / f"{option}.yaml").read_text())["defaults"][0]
    typed = OmegaConf.to_object(compose([f"prior={option}"]).prior)
    assert declared == f"/schema/prior/{type(typed).__name__}@_here_" and type(typed) in GROUP_SCHEMAS["prior"]
    module, name = typed._target_.rsplit(".", 1)
    assert module.startswith("rewardsds.priors.")  # the mapping rule: conf/prior/* -> rewardsds.priors.*
    cls = getattr(importlib.import_module(module), name)
    assert list(inspect.signature(cls.__init__).parameters) == ["self", "cfg"], option
    assert typing.get_type_hints(cls.__init__)["cfg"] is type(typed), option


# ----------------------------------------------------------------------------------------- prior.attention
def test_attention_kernel_goes_first_in_torchs_order_inside_the_unet_call(tiny_sd, monkeypatch, caplog):
    """prior.attention=cudnn: the UNet's calls run with cuDNN's kernel first in torch's SDPA order (the others
    after it, so shapes it cannot take still run), torch's order is restored after the call, and on a CPU the
    setting is a no-op with one warning. (The device is CUDA only for the context here; the GPU test checks the
    kernel that actually runs.)"""
    from torch.nn.attention import SDPBackend

    import rewardsds.priors.sd as sd
    from rewardsds.priors.attention import attention_kernels
    from rewardsds.priors.config import AttentionKernel

    default = list(torch._C._get_sdp_priority_order())
    with caplog.at_level(logging.WARNING, logger="rewardsds"):
        p = StableDiffusionPrior(SDPriorConfig(pretrained=str(tiny_sd), dtype="fp32", attention="cudnn")).to("cpu")
    assert [r.getMessage() for r in caplog.records if "prior.attention" in r.getMessage()] == [
        "prior.attention=cudnn on cpu: torch's cpu kernels run (the setting chooses among CUDA kernels)"]
    seen = []
    unet = p._unet_call
    p._unet_call = lambda *a, **k: (seen.append(list(torch._C._get_sdp_priority_order())), unet(*a, **k))[1]
    x, t, emb = torch.randn(2, 4, 8, 8), torch.full((2,), 500), p.encode_text(["a", ""])
    plain = p.predict_noise(x, t, emb)  # on the CPU: torch's own order
    monkeypatch.setattr(sd, "attention_kernels", lambda choice, device: attention_kernels(choice, torch.device("cuda")))
    chosen = p.predict_noise(x, t, emb)
    assert seen[0] == default
    assert seen[1][0] == int(SDPBackend.CUDNN_ATTENTION) and sorted(seen[1]) == sorted(default)
    assert list(torch._C._get_sdp_priority_order()) == default
    assert torch.equal(plain, chosen)  # the CPU ran the same kernels both times
    with attention_kernels(AttentionKernel.auto, torch.device("cuda")), attention_kernels(AttentionKernel.flash, torch.device("cpu")):
        assert list(torch._C._get_sdp_priority_order()) == default


def test_attention_choice_keeps_the_users_kernels_and_keys_the_compile_cache(tmp_path, monkeypatch):
    """The chosen kernel goes first and is enabled; kernels the user turned off stay off; and a compiled graph traced
    with one choice is never loaded from a warm compile cache for another (torch's cache keys do not see the SDPA
    settings, so the choice tags them). Compiles a one-op function on the CPU with the math kernel as the choice."""
    import torch._functorch.config as fc
    import torch._inductor.config as ic
    from torch._dynamo.utils import counters
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    from rewardsds.priors.attention import kernel_first
    from rewardsds.priors.config import AttentionKernel

    default_order = list(torch._C._get_sdp_priority_order())
    torch.backends.cuda.enable_flash_sdp(False)
    try:
        before = _cur_sdpa_kernel_backends(with_priority=True)
        with kernel_first(AttentionKernel.cudnn):
            inside = _cur_sdpa_kernel_backends(with_priority=True)
            assert inside[0] == SDPBackend.CUDNN_ATTENTION and SDPBackend.FLASH_ATTENTION not in inside
            assert inside[1:] == [b for b in before if b != SDPBackend.CUDNN_ATTENTION]
            assert "prior.attention=cudnn" in torch.compiler.config.cache_key_tag
        assert _cur_sdpa_kernel_backends(with_priority=True) == before and torch.compiler.config.cache_key_tag == ""
    finally:
        torch.backends.cuda.enable_flash_sdp(True)
        torch._C._set_sdp_priority_order(default_order)

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ic, "fx_graph_cache", True)
    monkeypatch.setattr(fc, "enable_autograd_cache", True)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))

    def compile_and_run(ctx) -> dict:
        torch._dynamo.reset()
        counters.clear()
        fn = torch.compile(lambda a, b, c: torch.nn.functional.scaled_dot_product_attention(a, b, c), dynamic=False)
        with ctx, torch.no_grad():
            fn(q, k, v)
        return dict(counters["aot_autograd"])

    assert compile_and_run(kernel_first(AttentionKernel.math)).get("autograd_cache_miss") == 1
    assert "autograd_cache_hit" not in compile_and_run(contextlib.nullcontext())  # torch's own choice: its own graph
    assert compile_and_run(kernel_first(AttentionKernel.math)).get("autograd_cache_hit") == 1  # the same choice: loaded
    torch._dynamo.reset()


def test_attention_option_is_validated_and_resumable():
    from rewardsds.errors import ConfigError
    from rewardsds.resume import is_operational

    from rewardsds.priors.config import MVDreamPriorConfig

    for schema in (SDPriorConfig, MVDreamPriorConfig):
        with pytest.raises(ConfigError, match="prior.attention"):
            schema(attention="fastest")
        assert schema(attention="cudnn").attention.value == "cudnn"
    assert is_operational("prior.attention")
