"""Conditional flow matching: the OT-path objective and the ODE sampler with multi-condition CFG.

Objective (F5-TTS; Lipman et al. 2023 "Flow Matching", sec. 4.1 OT path; MM-MovieDubber eq. 5/8):
    x_t = (1 - (1 - sigma) t) x0 + t x1,   u_t = x1 - (1 - sigma) x0,   x0 ~ N(0, I)
    L = || v(x_t, t, conditions) - u_t ||^2 over the frames to generate (the span), plus
        dur_weight * L_dur (MM-MovieDubber eq. 7: BCE of per-frame speech activity from lips).
Condition dropout is nested (DESIGN.md "Model"): one draw per sample picks which eq. 9 branch
it trains, so each branch guidance evaluates, the all-null one included, is learnt at a set rate.
Sampler: Euler or midpoint over a sway-sampled time grid (F5-TTS, "sway sampling"); guidance per
MM-MovieDubber eq. 9 with the branches it needs packed into one batched forward per step: four
for distinct scales, two (full and null) when the three are equal, one when eq. 9 reduces to a
single branch (unguided, all scales 0 or all 1). Guidance and seed may also be given per batch
row (a serving batch of unrelated requests): the step then evaluates the union of the rows'
branches with per-row weights, and each row's noise comes from its own seed at its own length.

Shape key: b = batch, s = streams, n = latent frames, c = latent width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dubforge.model.conditions import Conditions, Drop
from dubforge.model.config import BRANCH_PROBS, GUIDANCE_SCALE, REF_DROP

if TYPE_CHECKING:
    from dubforge.model.batch import Batch
    from dubforge.model.dubber import Dubber

Method = Literal["euler", "midpoint"]
SWAY_RANGE = (-1.0, 2.0 / (math.pi - 2.0))  # F5-TTS: the sway map stays monotonic in this range


# MM-MovieDubber eq. 9's branches: which of (video, labels, text, reference) each sets to phi.
# Training's nested dropout draws these same patterns (`random_drop`) and the sampler evaluates
# them (`cfg_branches`), so guidance only ever reads functions the model has learnt. The null
# branch drops the reference as well: eq. 9's unconditional velocity, as in F5-TTS, which drops
# the audio prompt and the text together.
BRANCHES: tuple[tuple[bool, bool, bool, bool], ...] = (
    (False, False, False, False),  # (V, C, T)
    (True, False, False, False),  # (phi, C, T)
    (True, True, False, False),  # (phi, phi, T)
    (True, True, True, True),  # (phi, phi, phi), no reference
)
FULL, NO_VIDEO, NO_VIDEO_LABELS, NULL = range(len(BRANCHES))


@dataclass(frozen=True)
class FlowOptions:
    """Training settings of the objective: OT-path sigma, the nested dropout's probability of
    each branch in `BRANCHES` order (full, no video, no video + labels, null; summing to 1), the
    reference-voice dropout of the non-null draws (the null draw always drops it) and the
    weight of the duration loss. Defaults: dubforge.model.config."""

    sigma: float = 0.0
    branch_probs: tuple[float, float, float, float] = BRANCH_PROBS
    drop_ref: float = REF_DROP
    dur_weight: float = 0.1

    def __post_init__(self) -> None:
        for name in ("sigma", "drop_ref"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FlowOptions.{name} must lie in [0, 1]")
        p = self.branch_probs
        if len(p) != len(BRANCHES) or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
            raise ValueError(
                f"FlowOptions.branch_probs={p}: need {len(BRANCHES)} probabilities >= 0 that sum "
                "to 1 (full, no video, no video + labels, null), e.g. (0.8, 0.07, 0.07, 0.06)"
            )
        if self.dur_weight < 0:
            raise ValueError("FlowOptions.dur_weight must be >= 0")


@dataclass(frozen=True)
class Guidance:
    """Multi-condition CFG scales (MM-MovieDubber eq. 9): lambda_V (video), lambda_C (labels,
    the "conclusion"), lambda_T (script). All 1.0 reproduces the fully conditioned velocity,
    all 0.0 the null one. Defaults: dubforge.model.config."""

    video: float = GUIDANCE_SCALE
    labels: float = GUIDANCE_SCALE
    text: float = GUIDANCE_SCALE


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
    """Nested per-sample dropout: one draw per sample picks a branch of `BRANCHES` with
    probabilities `opts.branch_probs`; the reference is dropped with the null branch, and in
    the other branches independently at `opts.drop_ref`."""
    u = _rand((2, b), generator, device)  # u: [2, b]
    edges = torch.tensor(opts.branch_probs, device=device).cumsum(0)[:-1]  # edges: [3]
    which = torch.searchsorted(edges, u[0], right=True)  # which: [b], branch index 0..3
    flags = torch.tensor(BRANCHES, device=device)[which]  # flags: [b, 4]
    ref = flags[:, 3] | (u[1] < opts.drop_ref)
    return Drop(video=flags[:, 0], labels=flags[:, 1], text=flags[:, 2], ref=ref)


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


def cfg_weights(g: Guidance) -> tuple[float, float, float, float]:
    """MM-MovieDubber eq. 9 regrouped per branch, in `BRANCHES` order:
    g' = lV v(V,C,T) + (lC - lV) v(phi,C,T) + (lT - lC) v(phi,phi,T) + (1 - lT) v(phi,phi,phi).
    Equal scales l leave (l, 0, 0, 1 - l): eq. 9 is then exactly the two-branch
    v(phi,phi,phi) + l (v(V,C,T) - v(phi,phi,phi))."""
    return (g.video, g.labels - g.video, g.text - g.labels, 1.0 - g.text)


def cfg_terms(g: Guidance | None) -> tuple[tuple[int, float], ...]:
    """(branch, weight) of the eq. 9 branches with a non-zero weight, the ones a guided step
    must evaluate; g=None (unguided) is the full branch alone."""
    if g is None:
        return ((FULL, 1.0),)
    return tuple((i, w) for i, w in enumerate(cfg_weights(g)) if w != 0.0)


def cfg_branches(conds: Conditions, branches: Sequence[int]) -> Conditions:
    """The given `BRANCHES` stacked on the batch in that order -> batch len(branches) * b,
    built once before the ODE loop."""
    b, device = conds.ref.shape[0], conds.ref.device
    drops = []
    for i in branches:
        video, labels, text, ref = BRANCHES[i]
        drops.append(Drop.constant(b, device, video=video, labels=labels, text=text, ref=ref))
    return Conditions.cat([conds.drop(d) for d in drops])


def guided_velocity(
    model: Dubber, conds: Conditions, cfg: Guidance | None | Sequence[Guidance | None]
) -> Callable[[Tensor, Tensor], Tensor]:
    """velocity(x [b, s, n, c], t 0-d) -> eq. 9's guided velocity [b, s, n, c], from one
    forward of the needed branches packed on the batch (k * b rows, k = len(cfg_terms(cfg))).
    `cfg` per row (a sequence of b): rows whose terms all agree take that one path; otherwise
    k is the union of the rows' branches and a row weighs a branch it does not need by 0."""
    if cfg is None or isinstance(cfg, Guidance):
        terms = cfg_terms(cfg)
    else:
        rows = [dict(cfg_terms(g)) for g in cfg]
        b = conds.ref.shape[0]
        if len(rows) != b:
            raise ValueError(f"{len(rows)} guidance settings given for a batch of {b}")
        if all(r == rows[0] for r in rows):
            terms = tuple(rows[0].items())
        else:
            return _per_row_velocity(model, conds, rows)
    branches, weights = zip(*terms, strict=True)
    packed = cfg_branches(conds, branches)
    k = len(branches)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        xs = x.repeat(k, 1, 1, 1)  # xs: [k * b, s, n, c]
        v = model.velocity(xs, t.expand(xs.shape[0]), packed).chunk(k, dim=0)  # k x [b, s, n, c]
        out = weights[0] * v[0]
        for w, vi in zip(weights[1:], v[1:], strict=True):
            out = out + w * vi
        return out

    return velocity


def _per_row_velocity(
    model: Dubber, conds: Conditions, rows: Sequence[dict[int, float]]
) -> Callable[[Tensor, Tensor], Tensor]:
    """`guided_velocity` for rows with different eq. 9 terms ({branch: weight} per row)."""
    branches = sorted(set().union(*rows))
    packed = cfg_branches(conds, branches)
    k = len(branches)
    weights = torch.tensor(
        [[r.get(i, 0.0) for r in rows] for i in branches], device=conds.ref.device
    )[..., None, None, None]  # weights: [k, b, 1, 1, 1]

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        xs = x.repeat(k, 1, 1, 1)  # xs: [k * b, s, n, c]
        v = model.velocity(xs, t.expand(xs.shape[0]), packed).chunk(k, dim=0)  # k x [b, s, n, c]
        out = weights[0].to(v[0].dtype) * v[0]
        for w, vi in zip(weights[1:], v[1:], strict=True):
            out = out + w.to(vi.dtype) * vi
        return out

    return velocity


def initial_noise(batch: Batch, seed: int | Sequence[int]) -> Tensor:
    """x0 ~ N(0, I) [b, s, n, c], zero on padding. One int seed draws the whole padded batch
    from one generator; a seed per row draws each row at its own streams and length from its
    own generator, so a row starts from the same noise whatever else is in the batch."""
    shape, device = tuple(batch.latents.shape), batch.latents.device
    mask = batch.frame_mask[..., None]
    if isinstance(seed, Integral):
        return _randn(shape, torch.Generator().manual_seed(int(seed)), device) * mask
    seeds = list(seed)
    if len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds given for a batch of {shape[0]}")
    x = torch.zeros(shape, device=device)
    for i, s in enumerate(seeds):
        streams = int(batch.frame_mask[i].any(dim=-1).sum())  # collate fills streams in order
        n = int(batch.lengths[i])
        gen = torch.Generator().manual_seed(int(s))
        x[i, :streams, :n] = _randn((streams, n, shape[-1]), gen, device)
    return x * mask


@torch.no_grad()
def sample(
    model: Dubber,
    batch: Batch,
    *,
    nfe: int = 32,
    method: Method = "euler",
    sway: float = -1.0,
    cfg: Guidance | None | Sequence[Guidance | None] = None,
    seed: int | Sequence[int] = 0,
) -> Tensor:
    """Generate latents [b, s, n, c] for the batch's span frames; frames outside the span keep
    the reference, padding is zero. Condition encoders run once; each step is one forward of
    batch k * b, k = the eq. 9 branches with non-zero weight (`cfg_terms`): 1 unguided, 2 for
    equal scales, 4 for distinct ones. Seeded: same seed and inputs -> same output.
    `cfg` and `seed` may each be given per row (sequences of b): k is then the union of the
    rows' branches, and each row's noise is drawn alone (`initial_noise`), so a row's output
    does not depend on the rest of the batch beyond float rounding."""
    conds, _ = model.encode_conditions(batch)
    mask = batch.frame_mask[..., None]
    x = initial_noise(batch, seed)
    velocity = guided_velocity(model, conds, cfg)
    x = integrate(velocity, x, time_grid(nfe, method, sway, x.device), method)
    return torch.where(batch.span[..., None], x, conds.ref) * mask
