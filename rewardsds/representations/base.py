"""The representation interface: the thing being optimised (a latent image, a NeRF, 3D Gaussians).

A representation is an ``nn.Module`` whose parameters are the scene, built from its validated schema object
(``NeRF(cfg)``, schemas in :mod:`rewardsds.representations.config`). The system calls, per step:

    setup(prior, device, seed)                 once, before the first step (shapes, init from image)
    out = render(cameras, step)                dict of named outputs
    on_before_backward / on_after_backward     optional hooks (gsplat densification statistics)
    on_after_optimizer_step(step, optimizer)   optional hook (densify / prune, occupancy-grid update)

``render`` returns ``{"latents": [b,c,h,w]}`` for representations that live in the prior's space, or
``{"rgb": [b,3,H,W] in [0,1], "opacity": [b,1,H,W], ...}`` for rendered ones. The system encodes
``rgb`` with the prior (with gradient) when there is no ``latents`` key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Optional

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from rewardsds.cameras import Cameras
    from rewardsds.priors.base import Prior


@dataclass(frozen=True)
class ExportOptions:
    """Settings of one asset export (:meth:`Representation.export`); None keeps the representation's own.

    Attributes:
        formats: names from the representation's ``export_formats`` (None: all of them).
        step: the optimisation step whose state is exported: it decides step-dependent settings such as
            the active SH degree of Gaussians or a NeRF's coarse-to-fine grid levels.
        mesh_resolution: grid samples per axis for marching cubes (NeRF; ``representation.mesh_resolution``).
        mesh_threshold: density level of the surface (NeRF; ``representation.mesh_threshold``).
        texture_size: texels per side of the baked texture (NeRF; ``representation.texture_size``).
        resolution_key, threshold_key, texture_key: how errors name those settings (a config key, or
            the command-line flag that set them).
    """

    formats: Optional[tuple[str, ...]] = None
    step: int = 10**9
    mesh_resolution: Optional[int] = None
    mesh_threshold: Optional[float] = None
    texture_size: Optional[int] = None
    resolution_key: str = "representation.mesh_resolution"
    threshold_key: str = "representation.mesh_threshold"
    texture_key: str = "representation.texture_size"


class Representation(nn.Module):
    """Base class of every optimised scene.

    Attributes:
        needs_cameras: whether ``render`` takes sampled cameras (3D) or ignores them (2D).
        outputs_latents: whether ``render`` returns the prior's space directly.
        min_views_per_object: views the representation can render per object (multi-view priors need 4).
        export_formats: the asset formats :meth:`export` writes (e.g. ``("mesh", "textured")``).
        depth_along_ray: whether the rendered ``depth`` is the distance along each pixel's ray (True) or
            the camera-space depth along the optical axis (False).
        load_shell_overrides: settings (fields of the class's schema) that build a cheap shell whose every
            parameter a checkpoint then replaces (``load_state_dict``), for loading a run without its inputs.
    """

    needs_cameras: bool = False
    outputs_latents: bool = False
    min_views_per_object: int = 1
    export_formats: ClassVar[tuple[str, ...]] = ()
    depth_along_ray: ClassVar[bool] = True
    load_shell_overrides: ClassVar[dict[str, Any]] = {}

    def setup(self, prior: "Prior", device: torch.device, seed: int = 0) -> None:
        """Allocate or initialise parameters that depend on the prior (called once, before the optimiser)."""

    def render(self, cameras: Optional["Cameras"], step: int, outputs: Optional[Collection[str]] = None) -> dict[str, Tensor]:
        """Named outputs for ``cameras`` at ``step``; ``outputs`` names those the caller uses (None: all), so a
        representation may skip the work of the others (it may still return them)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups, each a dict with ``params``, ``lr``, ``name`` (and optional
        ``betas``, ``eps``, ``weight_decay``). Group names are unique; they appear in logs."""
        raise NotImplementedError

    def on_before_backward(self, step: int, outputs: dict[str, Tensor]) -> None:
        pass

    def on_after_backward(self, step: int, outputs: dict[str, Tensor]) -> None:
        pass

    def on_after_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        pass

    #: True when ``on_after_optimizer_step`` makes host-side decisions that must follow a real update
    #: (densification, occupancy refresh). The system then checks the gradient for finiteness on the host (one
    #: device sync per step) and calls the hook only after an update; otherwise a non-finite step is skipped
    #: on the device (fused AdamW's ``found_inf``) and the step never waits for the GPU.
    host_post_step: bool = False

    def regularizers(self, outputs: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Extra losses named ``loss_*`` (summed by the system), e.g. opacity/sparsity terms."""
        return {}

    def export(self, out_dir: Path, options: Optional[ExportOptions] = None) -> list[Path]:
        """Write the asset files of ``options.formats`` into the existing folder ``out_dir``; return their paths.

        Callers that need an all-or-nothing export go through :func:`rewardsds.export_assets.write_exports`,
        which gives this method an empty staging folder and moves the files into place only on success.
        """
        return []

    def final_images(self, step: int) -> Optional[dict[str, Tensor]]:
        """For 2D representations: the final image(s) without cameras; None for 3D (use eval views)."""
        return None
