"""Variational score distillation (ProlificDreamer) and RewardVSD (RewardSDS paper Eq. 5).

A LoRA copy of the prior's UNet models the distribution of the current renders. Per candidate i
(ALGORITHMS.md 2.1, 2.3):

    g_i = w(t) [eps_cfg_pretrained(x_t^i; y) - eps_lora(x_t^i; y, c)]           (no eps term)

and the LoRA (plus its camera embedding) is trained with the plain diffusion loss on the DETACHED current
render at a fresh t' ~ U{0, ..., T-1}:

    L_lora = mean |pred_lora(a_t' sg(z) + s_t' eps'; y, c, t') - target|^2,   target = eps' or v

Both terms are built so that neither reaches the other's parameters: the VSD field is a constant (detached-
target trick) and L_lora sees only sg(z). With a reward strategy the candidates are weighted exactly as in
RewardSDS (the pretrained prediction at t is the engine's shared one) and the LoRA is evaluated only where a
weight is non-zero; the LoRA's training ignores the rewards.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from rewardsds import ddim
from rewardsds.errors import ConfigError
from rewardsds.losses.base import LossMode, StepContext, timestep_weight
from rewardsds.losses.config import VSDLossConfig
from rewardsds.priors.base import Prior, guide
from rewardsds.rng import Streams, seed_for, seeded_randn
from rewardsds.utils.chunks import call_ranges, rows_per_call

#: Attention projections that get LoRA layers: every attention processor, as the reference's LoRAAttnProcessor.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: Camera condition: the flattened 4x4 c2w matrix (all zero in 2D).
CAMERA_DIM = 16


class LoRAUNet(nn.Module):
    """A frozen UNet with LoRA adapters and a camera class embedding; only those two are registered.

    The base UNet is held outside module registration, so its weights never enter ``state_dict``, an
    optimiser, or ``.to()`` of a parent module (it is moved here, at construction). The LoRA layers that
    peft injects into it are registered under ``lora`` (names with ``.`` replaced by ``__``), and the camera
    embedding ``TimestepEmbedding(16 -> time-embed dim)`` is set as the UNet's class embedding, as in the
    reference, and registered as ``camera_embedding``. Trainable tensors are fp32; the base keeps its dtype.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` that shares no tensor with the prior (frozen here).
        rank: LoRA rank (alpha = rank, i.e. scale 1, and Gaussian init with std 1/rank as the reference).
        prediction_type: ``epsilon`` or ``v_prediction`` (the base's training target).
        channels_last: feed inputs in channels-last format on CUDA (as the prior does).
    """

    def __init__(self, unet: nn.Module, rank: int = 4, prediction_type: str = "epsilon", channels_last: bool = True):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        unet.requires_grad_(False)
        unet.eval()
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)))
        self.lora = nn.ModuleDict()
        for name, module in unet.named_modules():
            if isinstance(module, LoraLayer):
                self.lora[name.replace(".", "__")] = nn.ModuleDict({"A": module.lora_A, "B": module.lora_B})
        if not len(self.lora):
            raise ValueError("no attention projection (to_q/to_k/to_v/to_out.0) found for LoRA in this UNet")
        device = next(unet.parameters()).device
        self.lora.to(device=device, dtype=torch.float32)  # trainable state in fp32; peft casts activations per layer
        time_dim = int(unet.time_embedding.linear_2.out_features)
        self.camera_embedding = TimestepEmbedding(CAMERA_DIM, time_dim).to(device)
        unet.class_embedding = self.camera_embedding  # diffusers adds it to the time embedding (class_embed_type None)
        self._base = (unet,)
        self.prediction_type = prediction_type
        self.channels_last = bool(channels_last)

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def raw(
        self, x_t: Float[Tensor, "m c h w"], t: Int[Tensor, "m"], text: Float[Tensor, "m l d"], camera: Float[Tensor, "m 16"]
    ) -> Float[Tensor, "m c h w"]:
        """The UNet's raw output (eps or v by ``prediction_type``), fp32 [m, c, h, w]; differentiable in the LoRA.

        Args:
            x_t: [m, c, h, w]; t: [m] integer timesteps; text: [m, l, d]; camera: [m, 16] flattened c2w.
        """
        x = x_t.to(self.dtype)
        if x.device.type == "cuda" and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.base(x, t.to(x.device), encoder_hidden_states=text.to(self.dtype), class_labels=camera.float())
        return out.sample.float()

    def eps(
        self, x_t: Float[Tensor, "m c h w"], t: Int[Tensor, "m"], text: Float[Tensor, "m l d"], camera: Float[Tensor, "m 16"],
        alphas_cumprod: Float[Tensor, "T"],
    ) -> Float[Tensor, "m c h w"]:
        """Epsilon prediction in fp32 (v converted: eps = a v + s x_t)."""
        out = self.raw(x_t, t, text, camera)
        if self.prediction_type == "v_prediction":
            out = ddim.eps_from_v(out, x_t.float(), alphas_cumprod[t.to(alphas_cumprod.device).long()].view(-1, 1, 1, 1))
        return out


def camera_condition(camera: Optional[Float[Tensor, "b 4 4"]], b: int, device: torch.device) -> Float[Tensor, "b 16"]:
    """The LoRA's class input: flattened c2w [b, 16] (fp32), or zeros without cameras (2D)."""
    if camera is None:
        return torch.zeros(b, CAMERA_DIM, device=device)
    return camera.reshape(b, CAMERA_DIM).float().to(device)


def lora_training_draws(seed: int, step: int, b: int, shape: Sequence[int], T: int, drop_p: float, device) -> tuple[Tensor, Tensor, bool]:
    """(t' [b] ~ U{0..T-1}, eps' [b, c, h, w], drop camera?) of one LoRA step, from the run seed and step only.

    Keyed on (seed, step) so a resumed run trains the LoRA on exactly the draws of an uninterrupted one.
    """
    g = torch.Generator().manual_seed(seed_for(seed, step, Streams.LORA, 0))
    t = torch.randint(0, T, (b,), generator=g)
    drop = bool(torch.rand((), generator=g) < drop_p)
    eps = seeded_randn((b, *shape), seed_for(seed, step, Streams.LORA, 1), device)
    return t.to(device), eps, drop


class VSDLoss(LossMode):
    """VSD with a LoRA-adapted copy of the prior's UNet; with a reward strategy it is RewardVSD.

    Settings (:class:`~rewardsds.losses.config.VSDLossConfig`): ``guidance_scale`` (CFG of the pretrained prediction,
    7.5; VSD breaks with SDS's 100), ``weighting`` (w(t)), ``lora_rank`` (on every attention projection of the copy),
    ``lora_lr``, ``lora_weight_decay``, ``lora_betas``, ``lora_eps`` (AdamW settings of the LoRA group; the 2D
    reference's separate ``AdamW(lr=3e-4, weight_decay=0)`` with torch's default betas and eps is the same update,
    since AdamW's state and step are per parameter), ``lora_guidance_scale`` (CFG over the camera condition of the
    LoRA estimate, threestudio's guidance_scale_lora; 1 = a single call with the camera), ``camera_dropout``
    (probability of a zero camera in a LoRA training step), ``lora_base`` (None = LoRA on a copy of the prior's own
    UNet; or a Hub id / diffusers folder whose ``unet/`` and ``scheduler/`` are the LoRA's base, e.g.
    ``stabilityai/stable-diffusion-2-1``, the 768-px v-prediction model of the 2D reference), ``grad_clip``.
    """

    def __init__(self, cfg: VSDLossConfig):
        super().__init__(cfg)
        self.model: Optional[LoRAUNet] = None

    # ------------------------------------------------------------------ setup
    def setup(self, prior: Prior, reward, device: torch.device, total_steps: int, engine=None) -> None:
        """Build the LoRA model on ``device`` (once; a resumed run then loads its weights from the checkpoint)."""
        super().setup(prior, reward, device, total_steps, engine)
        if self.model is not None:
            return
        if prior.num_frames != 1 or prior.uses_camera:
            raise ConfigError("loss", "vsd", f"needs a single-view Stable Diffusion prior, but {type(prior).__name__} is multi-view",
                              "use prior=sd")
        if self.cfg.lora_base is None:
            try:
                unet = prior.trainable_copy()
            except NotImplementedError:
                raise ConfigError(
                    "loss", "vsd",
                    f"needs a trainable copy of the prior's UNet for its LoRA, and {type(prior).__name__} has none "
                    "(Prior.trainable_copy)",
                    "use prior=sd (any Stable Diffusion 1.x/2.x checkpoint), or another loss such as loss=sds",
                ) from None
            prediction_type = getattr(prior, "prediction_type", "epsilon")
        else:
            unet, prediction_type = load_lora_base(self.cfg.lora_base, prior, device)
        # Seeded from the run seed (seed_everything) but independent of any other draw before setup.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(torch.initial_seed(), 0, Streams.LORA))
            self.model = LoRAUNet(unet, self.cfg.lora_rank, prediction_type, prior.cfg.channels_last)

    def param_groups(self) -> list[dict[str, Any]]:
        if self.model is None:
            raise RuntimeError("VSDLoss.setup(prior, ...) must run before the optimiser is built")
        c = self.cfg
        return [{"params": self.model.lora_parameters(), "lr": c.lora_lr, "betas": tuple(c.lora_betas), "eps": c.lora_eps,
                 "weight_decay": c.lora_weight_decay, "name": "lora"}]

    # ------------------------------------------------------------------ LoRA estimate and training
    @torch.no_grad()
    def lora_prediction(
        self, x_t: Float[Tensor, "m c h w"], t: int, text: Float[Tensor, "m l d"], camera: Float[Tensor, "m 16"],
        alphas_cumprod: Float[Tensor, "T"], chunk: int,
    ) -> tuple[Float[Tensor, "m c h w"], int]:
        """eps_lora(x_t; y, c) for [m] inputs in chunks of ``chunk`` (0 = all); returns (eps fp32, model evaluations).

        With ``lora_guidance_scale != 1`` it is CFG over the camera: e0 + s (e_cam - e0), e0 with a zero camera.
        """
        m = x_t.shape[0]
        tt = torch.full((m,), t, dtype=torch.long, device=x_t.device)
        scale = self.cfg.lora_guidance_scale
        outs, evals = [], 0
        for s, e_ in call_ranges(m, rows_per_call(m, chunk)):
            sl = slice(s, e_)
            e = self.model.eps(x_t[sl], tt[sl], text[sl], camera[sl], alphas_cumprod)
            evals += e.shape[0]
            if scale != 1.0:
                e0 = self.model.eps(x_t[sl], tt[sl], text[sl], torch.zeros_like(camera[sl]), alphas_cumprod)
                e = e0 + scale * (e - e0)
                evals += e.shape[0]
            outs.append(e)
        return torch.cat(outs), evals

    def lora_loss(self, step: StepContext, text: Tensor, camera: Tensor) -> Tensor:
        """The LoRA's diffusion loss on the detached latents (ALGORITHMS.md 2.1), differentiable in the LoRA only."""
        prior = self.prior
        z = step.latents.detach().float()
        b = z.shape[0]
        t, eps, drop = lora_training_draws(self.engine.seed, step.step, b, z.shape[1:], prior.num_train_timesteps,
                                           self.cfg.camera_dropout, z.device)
        cam = torch.zeros_like(camera) if drop else camera
        x_t = prior.add_noise(z, eps, t)
        pred = self.model.raw(x_t, t, text, cam)
        if self.model.prediction_type == "v_prediction":
            a, s = prior.alpha_sigma(t)
            target = a * eps - s * z
        else:
            target = eps
        return F.mse_loss(pred, target)

    # ------------------------------------------------------------------ the step
    def _lora_inputs(self, step: StepContext) -> tuple[Tensor, Tensor]:
        """The LoRA models the renders of the prompt, conditioned on the camera (threestudio: base prompt, c2w)."""
        b = step.b
        return self.prior.encode_text([step.base_prompt] * b), camera_condition(step.camera, b, step.latents.device)

    def field(self, step: StepContext, cands, logs: dict[str, Tensor]) -> Tensor:
        if self.model is None:
            raise RuntimeError("VSDLoss.setup(prior, ...) must run before the first step")
        prior = self.prior
        text, camera = self._lora_inputs(step)
        idx = cands.active()
        rows = cands.flat_index(idx)
        k = idx.numel()
        eps_lora, lora_evals = self.lora_prediction(
            cands.noisy[rows], step.t, text.repeat(k, 1, 1), camera.repeat(k, 1), prior.alphas_cumprod,
            self.engine.chunk_size(cands.noisy),
        )
        cands.evals += lora_evals + step.b  # the estimate, and the LoRA's training call (aux_losses)
        logs["lora_evals"] = torch.tensor(float(lora_evals), device=step.latents.device)
        with torch.no_grad():
            w = timestep_weight(self.cfg.weighting, prior.alphas_cumprod[step.t])
            eps_pre = guide(cands.eps_cond[rows], cands.eps_uncond[rows], self.cfg.guidance_scale)
            return cands.scatter(w * (eps_pre - eps_lora), idx)

    def aux_losses(self, step: StepContext, cands, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        text, camera = self._lora_inputs(step)
        return {"loss_lora": self.lora_loss(step, text, camera)}


def load_lora_base(source: str, prior: Prior, device: torch.device) -> tuple[nn.Module, str]:
    """A separate LoRA base UNet (``loss.lora_base``): loaded frozen in the prior's ``grad_dtype`` (its dtype, bf16 for
    an fp16 prior), with its prediction type.

    Checks that it fits the prior: same latent channels, same text-embedding width, same noise schedule.
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from rewardsds.priors.sd import load_pretrained as _load

    what, hint = "VSD LoRA base UNet", "loss.lora_base"
    unet = _load(what, source, hint, UNet2DConditionModel.from_pretrained, source, subfolder="unet")
    sched = _load(what, source, hint, DDIMScheduler.from_pretrained, source, subfolder="scheduler")
    prediction_type = sched.config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(hint, source, f"has prediction_type {prediction_type!r}", "use an epsilon- or v-prediction SD checkpoint")
    prior_unet = getattr(prior, "unet", None)
    if prior_unet is not None:
        for key in ("in_channels", "cross_attention_dim"):
            if unet.config[key] != prior_unet.config[key]:
                raise ConfigError(hint, source, f"has {key} = {unet.config[key]} but the prior's UNet has {prior_unet.config[key]}",
                                  "use a base of the same family as the prior (e.g. SD 2.1 with SD 2.1-base), or leave loss.lora_base unset")
    ac = sched.alphas_cumprod.float().to(prior.alphas_cumprod.device)
    if ac.shape != prior.alphas_cumprod.shape or not torch.allclose(ac, prior.alphas_cumprod, atol=1e-6):
        raise ConfigError(hint, source, "has a different noise schedule from the prior",
                          "use a base trained with the prior's schedule, or leave loss.lora_base unset")
    # the LoRA's backward pass runs through this UNet: bf16 beside an fp16 prior (Prior.grad_dtype)
    dtype = getattr(prior, "grad_dtype", getattr(prior, "dtype", torch.float32))
    unet.to(device=device, dtype=dtype)
    if torch.device(device).type == "cuda" and prior.cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    return unet, prediction_type
