"""Conversion of the original MVDream checkpoint (ldm layout) to diffusers modules.

MVDream's ``MultiViewUNetModel`` is the SD 2.x ldm UNet plus a camera MLP (``camera_embed``) and a
joint multi-view self-attention that adds no weights. Its weights therefore load into a stock
``diffusers.UNet2DConditionModel`` with ``class_embed_type="projection"`` (the camera MLP becomes
``class_embedding``), after renaming ``camera_embed.{0,2}`` to the ``label_emb.0.{0,2}`` names that
diffusers' single-file converter reads for a projection class embedding.

Checkpoint layout (``MVDream/MVDream`` ``sd-v2.1-base-4view.pt``, a raw state dict):

- ``model.diffusion_model.*``: the 690 UNet tensors (converted here, checked key by key);
- ``first_stage_model.*``: the ldm VAE (converted only on request);
- ``cond_stage_model.model.*``: the OpenCLIP ViT-H text tower (converted only on request);
- 12 noise-schedule buffers (``betas``, ``alphas_cumprod``, ...): ignored, the schedule is recomputed.

Everything is built on the meta device first and the checkpoint tensors are assigned into it, so a
conversion never pays for a random initialisation of 867M parameters.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from rewardsds.errors import ModelLoadError
from rewardsds.utils.dtypes import dtype_name
from rewardsds.utils.quiet import quiet_empty_fp32_keep_list

quiet_empty_fp32_keep_list()  # the converted VAE is cast to the prior's dtype; it keeps nothing in fp32

#: prefixes of the original LatentDiffusion state dict
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
#: the ldm noise-schedule buffers stored next to the weights (recomputed, never read)
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)

#: ``unet_config.params`` of MVDream's ``configs/sd-v2-base.yaml`` (model ``sd-v2.1-base-4view``)
SD21_4VIEW_UNET_PARAMS: dict[str, Any] = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
    "transformer_depth": 1, "context_dim": 1024, "use_checkpoint": False, "legacy": False, "camera_dim": 16,
}
#: LatentDiffusionInterface parameters of the same config (the VAE latent scale and the beta schedule)
SD21_4VIEW_SCALE_FACTOR = 0.18215
SD21_4VIEW_LINEAR_START = 0.00085
SD21_4VIEW_LINEAR_END = 0.012

#: name of the json written next to a converted ``unet/`` folder
CONVERSION_INFO = "mvdream_conversion.json"

_RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}
_CAMERA_TO_LDM = {"class_embedding.linear_1": "camera_embed.0", "class_embedding.linear_2": "camera_embed.2"}
_MAX_LISTED = 5


# ----------------------------------------------------------------------------------------- configs
def read_ldm_unet_params(original_config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``MultiViewUNetModel`` keyword arguments of an original MVDream config.

    Args:
        original_config: ``None`` for the released ``sd-v2.1-base-4view`` model, a path to an ldm yaml
            (``model.params.unet_config.params``), or a mapping of the UNet keyword arguments themselves.

    Returns:
        A plain dict of the ldm UNet keyword arguments.
    """
    if original_config is None:
        return dict(SD21_4VIEW_UNET_PARAMS)
    if isinstance(original_config, Mapping):
        params = dict(original_config)
    else:
        import yaml

        path = Path(original_config)
        if not path.is_file():
            raise ModelLoadError(f"prior.original_config = {str(path)!r}: no such file. Fix: give the ldm yaml "
                                 "(e.g. MVDream's configs/sd-v2-base.yaml) or leave it null for sd-v2.1-base-4view")
        doc = yaml.safe_load(path.read_text())
        try:
            params = dict(doc["model"]["params"]["unet_config"]["params"])
        except (KeyError, TypeError):
            raise ModelLoadError(f"prior.original_config = {str(path)!r}: has no model.params.unet_config.params. "
                                 "Fix: give an ldm/MVDream yaml such as configs/sd-v2-base.yaml") from None
    missing = [k for k in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                           "context_dim", "image_size") if k not in params]
    if missing:
        raise ModelLoadError(f"the MVDream UNet config lacks {missing}. Fix: give the complete unet_config.params")
    if not params.get("use_linear_in_transformer", False):
        raise ModelLoadError(
            "the MVDream UNet config has use_linear_in_transformer = false (the sd-v1.5-4view variant), which "
            "this port does not cover. Fix: use the sd-v2.1-base-4view checkpoint"
        )
    return params


def unet_config_from_ldm(unet_params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config for an ldm ``MultiViewUNetModel`` config.

    Uses diffusers' ``create_unet_diffusers_config_from_ldm`` and fixes what it does not know about
    MVDream: ``sample_size`` is the ldm ``image_size`` (the latent size, 32, not 512 // 8) and the camera
    MLP is a ``"projection"`` class embedding of input size ``camera_dim``.

    Args:
        unet_params: ldm UNet keyword arguments (see :func:`read_ldm_unet_params`).

    Returns:
        Keyword arguments for ``UNet2DConditionModel``.
    """
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    params = dict(unet_params)
    # The helper reads only ch_mult of the VAE (for its 512 // 8 default sample size, replaced below).
    original = {"model": {"params": {"unet_config": {"params": params},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    config = create_unet_diffusers_config_from_ldm(original, {})
    config["sample_size"] = int(params["image_size"])
    camera_dim = params.get("camera_dim")
    if camera_dim is not None:
        config["class_embed_type"] = "projection"
        config["projection_class_embeddings_input_dim"] = int(camera_dim)
    return config


def build_unet_on_meta(config: Mapping[str, Any]):
    """A ``UNet2DConditionModel`` with meta tensors (no memory, no initialisation)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


# ----------------------------------------------------------------------------------------- key mapping
def ldm_unet_key(diffusers_key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """The MVDream (ldm) name, without ``model.diffusion_model.``, of one diffusers UNet key.

    The inverse of diffusers' ``convert_ldm_unet_checkpoint`` for SD-layout UNets (plus the camera MLP).
    It lets a checkpoint be checked for missing and unexpected keys in its own names before conversion.

    Args:
        diffusers_key: a ``UNet2DConditionModel`` state-dict key.
        layers_per_block: ``num_res_blocks`` of the ldm config.
        up_blocks_with_attention: indices of the diffusers up blocks that hold transformers (their
            upsampler is ``output_blocks.N.2`` instead of ``output_blocks.N.1``).

    Returns:
        The ldm key.
    """
    n = layers_per_block + 1  # ldm blocks per resolution level (resnets + one down/upsampler)

    def resnet(rest: str) -> str:
        head, _, tail = rest.partition(".")
        return f"{_RESNET_TO_LDM.get(head, head)}.{tail}"

    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", diffusers_key):
        b, i, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * n + i}.0.{resnet(rest)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", diffusers_key):
        return f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", diffusers_key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", diffusers_key):
        return f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", diffusers_key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", diffusers_key):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.0.{resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", diffusers_key):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", diffusers_key):
        b = int(m[1])
        return f"output_blocks.{b * n + layers_per_block}.{2 if b in up_blocks_with_attention else 1}.conv.{m[2]}"
    module, _, param = diffusers_key.rpartition(".")
    if module in _CAMERA_TO_LDM:
        return f"{_CAMERA_TO_LDM[module]}.{param}"
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    layers = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if diffusers_key in layers:
        return layers[diffusers_key]
    raise KeyError(f"no ldm name is known for the diffusers UNet key {diffusers_key!r}")


def expected_ldm_unet_shapes(unet) -> dict[str, tuple[int, ...]]:
    """ldm name (without prefix) -> shape of every weight a checkpoint must hold for ``unet``.

    Args:
        unet: a ``UNet2DConditionModel`` (meta tensors are fine).
    """
    cfg = unet.config
    with_attn = {i for i, t in enumerate(cfg.up_block_types) if "CrossAttn" in t}
    return {
        ldm_unet_key(k, cfg.layers_per_block, with_attn): tuple(v.shape) for k, v in unet.state_dict().items()
    }


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > _MAX_LISTED else ''})"


def check_unet_keys(state_dict: Mapping[str, Tensor], unet, source: str) -> None:
    """Raise ModelLoadError when the checkpoint's UNet keys or shapes differ from the architecture.

    Args:
        state_dict: the whole original checkpoint (``model.diffusion_model.*`` keys are checked).
        unet: the target ``UNet2DConditionModel`` (meta tensors are fine).
        source: the file name for the message.
    """
    expected = expected_ldm_unet_shapes(unet)
    found = {k[len(UNET_PREFIX):]: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    if not found:
        sample = ", ".join(list(state_dict)[:_MAX_LISTED])
        raise ModelLoadError(
            f"{source}: no UNet weights under {UNET_PREFIX!r} (its first keys: {sample}). Fix: give the original "
            "MVDream checkpoint (sd-v2.1-base-4view.pt) or a folder written by scripts/convert_mvdream.py"
        )
    missing = sorted(UNET_PREFIX + k for k in expected.keys() - found.keys())
    unexpected = sorted(UNET_PREFIX + k for k in found.keys() - expected.keys())
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing UNet keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected UNet keys: {_listing(unexpected)}")
        raise ModelLoadError(
            f"{source} does not match the MVDream UNet architecture ({len(expected)} keys expected): "
            f"{'; '.join(parts)}. Fix: use the sd-v2.1-base-4view checkpoint, or set prior.original_config to the "
            "ldm yaml this checkpoint was trained with"
        )
    wrong = [f"{UNET_PREFIX}{k} {tuple(found[k].shape)} != {expected[k]}" for k in sorted(expected)
             if tuple(found[k].shape) != expected[k]]
    if wrong:
        raise ModelLoadError(
            f"{source}: UNet weights with the wrong shape: {_listing(wrong)}. Fix: set prior.original_config to the "
            "ldm yaml this checkpoint was trained with (the default is sd-v2.1-base-4view)"
        )


def convert_unet_state_dict(state_dict: Mapping[str, Tensor], unet, source: str = "checkpoint") -> dict[str, Tensor]:
    """Check and convert the UNet part of an original MVDream checkpoint to diffusers names.

    Args:
        state_dict: the whole original checkpoint; VAE, text, schedule and other keys are ignored.
        unet: the target ``UNet2DConditionModel`` (meta tensors are fine); gives the expected keys.
        source: the file name for error messages.

    Returns:
        The UNet state dict in diffusers names (the same tensor objects, no copies).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    check_unet_keys(state_dict, unet, source)
    # diffusers reads a "projection" class embedding from label_emb.0.{0,2}; MVDream calls it camera_embed.
    renamed = {}
    for k, v in state_dict.items():
        if not k.startswith(UNET_PREFIX):
            continue
        for cam, ldm in (("camera_embed.0.", "label_emb.0.0."), ("camera_embed.2.", "label_emb.0.2.")):
            if k.startswith(UNET_PREFIX + cam):
                k = UNET_PREFIX + ldm + k[len(UNET_PREFIX + cam):]
        renamed[k] = v
    converted = convert_ldm_unet_checkpoint(renamed, dict(unet.config))
    target = set(unet.state_dict())
    if set(converted) != target or any(v is None for v in converted.values()):
        # Keys were checked above, so this is a mapping bug, not a user error.
        raise RuntimeError(
            f"MVDream UNet conversion produced {len(converted)} keys for {len(target)} parameters "
            f"(missing {sorted(target - set(converted))[:_MAX_LISTED]}, extra {sorted(set(converted) - target)[:_MAX_LISTED]})"
        )
    return converted


# ----------------------------------------------------------------------------------------- files
def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read an original MVDream checkpoint (.pt/.ckpt/.bin pickle or .safetensors) onto the CPU.

    Pickles are read with ``weights_only=True`` (no arbitrary code) and memory-mapped when they use
    the zip format, so the 5 GB file is not copied into RAM before conversion. A ``{"state_dict": ...}``
    wrapper (Lightning checkpoints) is unwrapped.

    Args:
        path: the checkpoint file.

    Returns:
        The flat state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"MVDream checkpoint {str(path)!r} does not exist. Fix: set prior.pretrained to the "
                             "sd-v2.1-base-4view.pt file, its Hub repo MVDream/MVDream, or a converted folder")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path), device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as err:  # unpickling errors have many types; the message says which
            raise ModelLoadError(
                f"could not read {str(path)!r} with torch.load(weights_only=True) ({type(err).__name__}: {err}). "
                "Fix: if the file is trusted but holds Python objects beyond tensors, re-save its state dict as "
                ".safetensors and point prior.pretrained at that"
            ) from err
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ModelLoadError(f"{str(path)!r} holds a {type(sd).__name__}, not a state dict. Fix: give the original "
                             "MVDream checkpoint")
    return {k: v for k, v in sd.items() if isinstance(v, Tensor)}


def unet_from_state_dict(
    state_dict: Mapping[str, Tensor],
    original_config: str | Path | Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    source: str = "checkpoint",
):
    """Build the diffusers MVDream UNet from an original checkpoint's state dict.

    Args:
        state_dict: the whole original checkpoint.
        original_config: ldm UNet config (see :func:`read_ldm_unet_params`); ``None`` = sd-v2.1-base-4view.
        dtype: parameter dtype of the result.
        source: the file name for error messages.

    Returns:
        A ``UNet2DConditionModel`` on the CPU in eval mode without gradients (the multi-view attention
        processor is installed by :func:`rewardsds.priors.mvdream.set_multiview_attention`).
    """
    unet = build_unet_on_meta(unet_config_from_ldm(read_ldm_unet_params(original_config)))
    converted = convert_unet_state_dict(state_dict, unet, source)
    unet.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def unet_from_checkpoint(path: str | Path, original_config=None, dtype: torch.dtype = torch.float32):
    """:func:`unet_from_state_dict` on a checkpoint file."""
    return unet_from_state_dict(load_checkpoint(path), original_config, dtype, source=str(path))


def vae_from_state_dict(state_dict: Mapping[str, Tensor], vae_config: Mapping[str, Any], dtype: torch.dtype = torch.float32):
    """The ``AutoencoderKL`` stored under ``first_stage_model.`` of an original checkpoint.

    Args:
        state_dict: the whole original checkpoint.
        vae_config: the diffusers VAE config (SD 2.1-base's ``vae/config.json``).
        dtype: parameter dtype of the result.
    """
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_sd = {k: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    if not vae_sd:
        raise ModelLoadError(f"the checkpoint has no VAE weights under {VAE_PREFIX!r}. Fix: set "
                             "prior.vae_text_from_checkpoint=false to take the VAE from prior.base_model")
    converted = {k: v for k, v in convert_ldm_vae_checkpoint(vae_sd, dict(vae_config)).items() if v is not None}
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(vae_config))
    _load_checked(vae, converted, "VAE", VAE_PREFIX)
    return vae.to(dtype).eval().requires_grad_(False)


def text_encoder_from_state_dict(state_dict: Mapping[str, Tensor], text_config, dtype: torch.dtype = torch.float32):
    """The SD 2.x ``CLIPTextModel`` stored under ``cond_stage_model.model.`` (OpenCLIP names).

    MVDream conditions on OpenCLIP's penultimate layer followed by ``ln_final``; the diffusers SD 2.x
    text encoder has one layer fewer (``num_hidden_layers``), so resblocks from that index on are
    dropped (diffusers' converter drops resblock 23 of ViT-H by name; this generalises it).

    Args:
        state_dict: the whole original checkpoint.
        text_config: a ``transformers.CLIPTextConfig`` (SD 2.1-base's ``text_encoder/config.json``).
        dtype: parameter dtype of the result.
    """
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel

    if not any(k.startswith(TEXT_PREFIX) for k in state_dict):
        raise ModelLoadError(f"the checkpoint has no text encoder weights under {TEXT_PREFIX!r}. Fix: set "
                             "prior.vae_text_from_checkpoint=false to take it from prior.base_model")
    with torch.device("meta"):
        model = CLIPTextModel(text_config)
    converted = convert_open_clip_checkpoint(model, dict(state_dict), prefix=TEXT_PREFIX)
    # transformers 5 dropped the ``text_model.`` level of CLIPTextModel that diffusers' names still carry
    strip = not any(k.startswith("text_model.") for k in model.state_dict())
    n_layers = text_config.num_hidden_layers
    keep = {}
    for k, v in converted.items():
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)
        if (m and int(m[1]) >= n_layers) or k == "text_projection.weight":
            continue  # beyond the penultimate layer / pooled projection: unused by MVDream
        keep[k[len("text_model."):] if strip and k.startswith("text_model.") else k] = v
    _load_checked(model, keep, "text encoder", TEXT_PREFIX)
    # position_ids is a non-persistent buffer, so assign-loading left it on the meta device.
    emb = getattr(model, "text_model", model).embeddings
    emb.position_ids = torch.arange(emb.position_ids.shape[-1]).expand(1, -1)
    return model.to(dtype).eval().requires_grad_(False)


def _load_checked(module: torch.nn.Module, sd: dict[str, Tensor], what: str, prefix: str) -> None:
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"the checkpoint's {what} (keys under {prefix!r}) does not match the base model's {what} config: "
            f"missing {_listing(missing)}, unexpected {_listing(unexpected)}. Fix: point prior.base_model at the "
            f"SD 2.1-base folder, or set prior.vae_text_from_checkpoint=false"
        )
    module.load_state_dict(sd, strict=True, assign=True)


def save_converted(unet, out_folder: str | Path, source: str, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a converted UNet as a diffusers folder that loads without conversion.

    Layout: ``<out>/unet/{config.json, diffusion_pytorch_model.safetensors}`` and
    ``<out>/mvdream_conversion.json`` (source checkpoint, diffusers version, camera convention).

    Args:
        unet: the converted ``UNet2DConditionModel``.
        out_folder: destination folder (created).
        source: the checkpoint it came from (a path or ``repo/filename``).
        extra: more fields for the json.

    Returns:
        The output folder.
    """
    import diffusers

    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    info = {
        "source": source,
        "model": "MVDream sd-v2.1-base-4view (MultiViewUNetModel)",
        "diffusers_version": diffusers.__version__,
        "camera": "c2w (z-up world, OpenGL camera axes), translation normalised, flattened row-major to 16 floats",
        "attention": "joint self-attention over num_frames views (rewardsds.priors.mvdream.MultiViewAttnProcessor)",
        "scale_factor": SD21_4VIEW_SCALE_FACTOR,
        "beta_schedule": {"linear_start": SD21_4VIEW_LINEAR_START, "linear_end": SD21_4VIEW_LINEAR_END,
                          "kind": "ldm linear (scaled_linear)"},
        **dict(extra or {}),
    }
    (out / CONVERSION_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def is_converted_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`save_converted` (or any diffusers folder with unet/)."""
    p = Path(path)
    return p.is_dir() and (p / "unet" / "config.json").is_file()


_CKPT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def resolve_source(pretrained: str, filename: Optional[str], local_files_only: bool = False) -> tuple[str, str]:
    """Where the MVDream UNet comes from: ``("folder", id_or_path)`` or ``("checkpoint", local_file)``.

    Args:
        pretrained: a converted folder (``unet/config.json`` inside), a checkpoint file, a folder holding
            ``filename``, or a Hub repo id (``MVDream/MVDream``).
        filename: the checkpoint inside a folder or Hub repo (``sd-v2.1-base-4view.pt``); ``None`` means
            ``pretrained`` is a diffusers-layout folder or Hub repo with ``unet/``.
        local_files_only: never touch the network (the Hub cache must hold the file).

    Returns:
        (kind, location); checkpoints are downloaded (or found in the cache) first.
    """
    from rewardsds.priors.sd import load_pretrained

    p = Path(pretrained).expanduser()
    if is_converted_folder(p) or (filename is None and not p.is_file()):
        return "folder", str(p) if p.exists() else pretrained
    if p.is_file():
        return "checkpoint", str(p)
    if p.is_dir():
        if (p / filename).is_file():
            return "checkpoint", str(p / filename)
        raise ModelLoadError(
            f"prior.pretrained = {pretrained!r} is a folder with neither unet/config.json (a converted folder) nor "
            f"{filename!r}. Fix: point it at the sd-v2.1-base-4view checkpoint, or convert once with "
            "`python scripts/convert_mvdream.py <ckpt> <folder>` and point it at that folder"
        )
    if p.suffix in _CKPT_SUFFIXES or pretrained.startswith((".", "/", "~")) or pretrained.count("/") != 1:
        raise ModelLoadError(f"prior.pretrained = {pretrained!r}: no such file or folder. Fix: give an existing "
                             "checkpoint file, a converted folder, or a Hub repo id such as MVDream/MVDream")
    from huggingface_hub import hf_hub_download

    path = load_pretrained("MVDream prior", f"{pretrained}/{filename}", "prior.pretrained", hf_hub_download, pretrained,
                           filename, local_files_only=local_files_only)
    return "checkpoint", str(path)


def convert_to_folder(
    pretrained: str,
    out_folder: str | Path,
    filename: Optional[str] = "sd-v2.1-base-4view.pt",
    original_config: str | Path | Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    vae_text_base: Optional[str] = None,
    local_files_only: bool = False,
) -> Path:
    """Convert an original MVDream checkpoint once into a folder that ``prior.pretrained`` loads directly.

    Args:
        pretrained: checkpoint file, folder holding ``filename``, or Hub repo id.
        out_folder: destination (``unet/`` and ``mvdream_conversion.json``; ``vae/`` and ``text_encoder/``
            too when ``vae_text_base`` is given).
        filename: checkpoint name inside a folder or Hub repo.
        original_config: ldm UNet config of a non-default checkpoint.
        dtype: dtype the weights are stored in.
        vae_text_base: an SD 2.1-base id/folder whose ``vae/`` and ``text_encoder/`` configs describe the
            checkpoint's VAE and text tower; their weights are then converted from the checkpoint too.
        local_files_only: never touch the network.

    Returns:
        The output folder.
    """
    kind, location = resolve_source(pretrained, filename, local_files_only)
    if kind != "checkpoint":
        raise ModelLoadError(f"{pretrained!r} is already a converted folder. Fix: give the original checkpoint")
    state_dict = load_checkpoint(location)
    unet = unet_from_state_dict(state_dict, original_config, dtype, source=location)
    n_unet = sum(k.startswith(UNET_PREFIX) for k in state_dict)
    ignored = sorted(k for k in state_dict if not k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)))
    out = save_converted(unet, out_folder, source=location if Path(pretrained).exists() else f"{pretrained}/{filename}",
                         extra={"unet_keys": n_unet, "ignored_keys": ignored, "dtype": dtype_name(dtype)})
    if vae_text_base is not None:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextConfig

        kw = dict(local_files_only=local_files_only)
        vae_cfg = AutoencoderKL.load_config(vae_text_base, subfolder="vae", **kw)
        text_cfg = CLIPTextConfig.from_pretrained(vae_text_base, subfolder="text_encoder", **kw)
        vae_from_state_dict(state_dict, vae_cfg, dtype).save_pretrained(out / "vae", safe_serialization=True)
        text_encoder_from_state_dict(state_dict, text_cfg, dtype).save_pretrained(out / "text_encoder")
    return out

