"""Conditional flow matching: the OT-path objective and the ODE sampler with multi-condition CFG.

Objective (F5-TTS; Lipman et al. 2023 "Flow Matching", sec. 4.1 OT path; MM-MovieDubber eq. 5/8):
    x_t = (1 - (1 - sigma) t) x0 + t x1,   u_t = x1 - (1 - sigma) x0,   x0 ~ N(0, I)
    L = || v(x_t, t, conditions) - u_t ||^2 over the frames to generate (the span), plus
        dur_weight * L_dur (MM-MovieDubber eq. 7: BCE of per-frame speech activity from lips).
Sampler: Euler or midpoint over a sway-sampled time grid (F5-TTS, "sway sampling"); guidance per
MM-MovieDubber eq. 9 with the four branches packed into one batched forward per step.

Shape key: b = batch, s = streams, n = latent frames, c = latent width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dubforge.model.conditions import Conditions, Drop

if TYPE_CHECKING:
    from dubforge.model.batch import Batch
    from dubforge.model.dubber import Dubber

Method = Literal["euler", "midpoint"]
SWAY_RANGE = (-1.0, 2.0 / (math.pi - 2.0))  # F5-TTS: the sway map stays monotonic in this range


@dataclass(frozen=True)
class FlowOptions:
    """Training settings of the objective: OT-path sigma, per-sample dropout probabilities of
    each condition (MM-MovieDubber: video, labels, text at 5 %; F5-TTS drops the reference
    audio at 30 %) and the weight of the duration loss."""

    sigma: float = 0.0
    drop_video: float = 0.05
    drop_labels: float = 0.05
    drop_text: float = 0.05
    drop_ref: float = 0.3
    dur_weight: float = 0.1

    def __post_init__(self) -> None:
        for name in ("sigma", "drop_video", "drop_labels", "drop_text", "drop_ref"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FlowOptions.{name} must lie in [0, 1]")
        if self.dur_weight < 0:
            raise ValueError("FlowOptions.dur_weight must be >= 0")


@dataclass(frozen=True)
class Guidance:
    """Multi-condition CFG scales (MM-MovieDubber eq. 9): lambda_V (video), lambda_C (labels,
    the "conclusion"), lambda_T (script). All 1.0 reproduces the fully conditioned velocity.
    `null_drops_ref`: the all-null branch also drops the reference voice, as F5-TTS's
    unconditional branch does (eq. 9 does not name the reference)."""

    video: float = 2.0
    labels: float = 2.0
    text: float = 2.0
    null_drops_ref: bool = True


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def random_drop(
    b: int, opts: FlowOptions, generator: torch.Generator | None, device: torch.device
) -> Drop:
    """Independent per-sample Bernoulli drops of video, labels, text and reference."""
    u = _rand((4, b), generator, device)  # u: [4, b]
    p = (opts.drop_video, opts.drop_labels, opts.drop_text, opts.drop_ref)
    return Drop(*(u[i] < p[i] for i in range(4)))


def ot_path(x0: Tensor, x1: Tensor, t: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Point x_t and target velocity u_t of the OT path; x0, x1: [b, ...], t: [b]."""
    tt = t.view(-1, *([1] * (x1.dim() - 1)))
    x_t = (1 - (1 - sigma) * tt) * x0 + tt * x1
    return x_t, x1 - (1 - sigma) * x0


def masked_mse(v: Tensor, u: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked frames of the per-frame MSE; v, u: [b, s, n, c], mask: [b, s, n]."""
    per_frame = (v.float() - u.float()).pow(2).mean(dim=-1)  # per_frame: [b, s, n]
    return (per_frame * mask).sum() / mask.sum().clamp(min=1)


def training_loss(
    model: Dubber, batch: Batch, opts: FlowOptions, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """One CFM step's losses: {"loss", "cfm", "dur"}; "loss" carries the gradient."""
    x1 = batch.latents  # x1: [b, s, n, c]
    b, device = x1.shape[0], x1.device
    drop = random_drop(b, opts, generator, device)
    conds, dur_logits = model.encode_conditions(batch)
    conds = conds.drop(drop)
    # without its reference a sample's whole target is to be generated, so it is all learnt
    span = batch.span | (drop.ref[:, None, None] & batch.frame_mask)
    x0 = _randn(tuple(x1.shape), generator, device)
    t = _rand((b,), generator, device)
    x_t, u = ot_path(x0, x1, t, opts.sigma)
    cfm = masked_mse(model.velocity(x_t, t, conds), u, span)
    dur = x1.new_zeros(())
    if dur_logits is not None and bool(batch.activity_mask.any()):
        m = batch.activity_mask
        dur = F.binary_cross_entropy_with_logits(dur_logits[m].float(), batch.activity[m])
    loss = cfm + opts.dur_weight * dur
    return {"loss": loss, "cfm": cfm.detach(), "dur": dur.detach()}


def sway_times(steps: int, coef: float, device: torch.device | None = None) -> Tensor:
    """Time grid [steps + 1] from 0 to 1, warped by sway sampling (F5-TTS, "sway sampling"):
    t = u + s (cos(pi/2 u) - 1 + u). s < 0 puts more steps near t = 0; s = 0 is uniform."""
    if not SWAY_RANGE[0] <= coef <= SWAY_RANGE[1]:
        raise ValueError(
            f"sway coefficient {coef} is outside [{SWAY_RANGE[0]}, {SWAY_RANGE[1]:.3f}], where "
            "the time grid stops being monotonic; F5-TTS uses -1"
        )
    u = torch.linspace(0.0, 1.0, steps + 1, device=device)
    return u + coef * (torch.cos(math.pi / 2 * u) - 1 + u)


def time_grid(nfe: int, method: Method, sway: float, device: torch.device | None = None) -> Tensor:
    """Grid for `nfe` velocity evaluations: Euler takes nfe steps, midpoint nfe / 2."""
    if method not in ("euler", "midpoint"):
        raise ValueError(f"unknown ODE method {method!r}; use 'euler' or 'midpoint'")
    if nfe < 1 or (method == "midpoint" and nfe % 2):
        raise ValueError(f"nfe={nfe}: need >= 1, and an even number for midpoint (2 per step)")
    return sway_times(nfe if method == "euler" else nfe // 2, sway, device)


def integrate(
    velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, times: Tensor, method: Method
) -> Tensor:
    """Solve dx/dt = velocity(x, t) over `times` with fixed steps; t is passed as a 0-d tensor."""
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        dt = t1 - t0
        if method == "euler":
            x = x + dt * velocity(x, t0)
        else:  # explicit midpoint (RK2)
            x_mid = x + dt / 2 * velocity(x, t0)
            x = x + dt * velocity(x_mid, t0 + dt / 2)
    return x


def cfg_combine(
    v_full: Tensor, v_no_v: Tensor, v_no_vc: Tensor, v_null: Tensor, g: Guidance
) -> Tensor:
    """MM-MovieDubber eq. 9: v(phi,phi,phi) + lV (v(V,C,T) - v(phi,C,T))
    + lC (v(phi,C,T) - v(phi,phi,T)) + lT (v(phi,phi,T) - v(phi,phi,phi))."""
    return (
        v_null
        + g.video * (v_full - v_no_v)
        + g.labels * (v_no_v - v_no_vc)
        + g.text * (v_no_vc - v_null)
    )


def cfg_branches(conds: Conditions, g: Guidance) -> Conditions:
    """The four eq. 9 branches stacked on the batch: [full | no video | no video, no labels |
    nothing] -> batch 4b, built once before the ODE loop."""
    b, device = conds.ref.shape[0], conds.ref.device
    drops = (
        Drop.constant(b, device, video=False, labels=False, text=False, ref=False),
        Drop.constant(b, device, video=True, labels=False, text=False, ref=False),
        Drop.constant(b, device, video=True, labels=True, text=False, ref=False),
        Drop.constant(b, device, video=True, labels=True, text=True, ref=g.null_drops_ref),
    )
    return Conditions.cat([conds.drop(d) for d in drops])


@torch.no_grad()
def sample(
    model: Dubber,
    batch: Batch,
    *,
    nfe: int = 32,
    method: Method = "euler",
    sway: float = -1.0,
    cfg: Guidance | None = None,
    seed: int = 0,
) -> Tensor:
    """Generate latents [b, s, n, c] for the batch's span frames; frames outside the span keep
    the reference, padding is zero. Condition encoders run once; each step is one forward of
    batch b (no cfg) or 4b (cfg). Seeded: same seed and inputs -> same output."""
    conds, _ = model.encode_conditions(batch)
    packed = conds if cfg is None else cfg_branches(conds, cfg)
    branches = 1 if cfg is None else 4
    mask = batch.frame_mask[..., None]
    gen = torch.Generator().manual_seed(seed)
    x = _randn(tuple(batch.latents.shape), gen, batch.latents.device) * mask

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        xs = x.repeat(branches, 1, 1, 1)  # xs: [branches * b, s, n, c]
        v = model.velocity(xs, t.expand(xs.shape[0]), packed)
        return v if cfg is None else cfg_combine(*v.chunk(4, dim=0), cfg)

    x = integrate(velocity, x, time_grid(nfe, method, sway, x.device), method)
    return torch.where(batch.span[..., None], x, conds.ref) * mask
