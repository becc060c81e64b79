"""IJSAT — Interpolated Joint Space Adversarial Training (Lau et al., TPAMI 2023).

An exactly invertible Glow-style multiscale normalizing flow (``normflows``: actnorm, invertible
1×1 conv, affine coupling, squeeze/split; trainables.ijsat_flow) is trained once per data set by
maximum likelihood and frozen; it is a cached component, run in fp32. With encoder F (image -> list of
latents, one per level) and decoder G = F⁻¹, the Joint Space Threat Model is

    x' = clip(G(F(x) + δ_z) + δ_x, 0, 1),   ‖δ_z‖∞ ≤ ε_z on every level,  ‖δ_x‖∞ ≤ ε_x,

and the Joint Space Attack (``joint_attack``) is PGD on (δ_z, δ_x) jointly: random start,
K signed steps with separate step sizes, gradients through G. δ_z = 0 is plain L∞ PGD; δ_x = 0
is the on-manifold attack (exported for evaluation through ``extra_attacks``).

Robust Mixup: with probability ``mixup_prob`` a batch is paired with a shuffled copy,
λ ~ Beta(α, α) per pair, the pair interpolated in latent space (x̃ = G(λF(x_i) + (1−λ)F(x_j)),
default) or pixel space, and the joint attack runs on the interpolated point maximizing
λ·CE(·, y_i) + (1−λ)·CE(·, y_j); the classifier trains on it with the mixed labels. The loss is
clean_weight·CE(x) + joint_weight·CE(JSA(x)) + mix_weight·mixed-CE(JSA(x̃)). The flow is used
only in training; inference is the plain classifier. Expect robustness to unseen (on-manifold,
spatial, corruption) attacks to improve over pixel-only AT at similar L∞ robustness; larger ε_z
trades clean accuracy.

A latent radius has no natural scale (a unit of the N(0, I) prior moves an 8×8 digit's pixels
differently from a 32×32 photo's), so before the flow is cached it is gated and calibrated on
held-out images (``check_flow``): bits/dim at most a per-data-set bound and a round trip within
1/255, else ``FlowRefused``; then the RMS pixel displacement per unit latent radius is measured
and stored in the flow (``calibrate``). The config gives ε_z in those calibrated pixel units
(``eps_z_pixel``: the RMS displacement a random corner of the latent box causes), and the
latent radius is eps_z_pixel / calibration.

In the config, ε_x is the inherited ``eps_train`` field; ε_x and ε_z are budgets, scaled per data set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn import functional

from trainables.base import EPS, BaseConfig, Component, Defense, sgd_step
from trainables.common import ce_sum, eval_mode
from trainables.ijsat_flow import CALIBRATION_RADIUS, GlowFlow, check_flow, fit_flow, flow_setting


MIXUP_SPACES = ("latent", "pixel")


@dataclass(frozen=True)
class Config(BaseConfig):
    # latent L∞ radius per level, in calibrated pixel units: the RMS pixel displacement that a
    # random corner of the latent box moves an image by (ε_z in latent units = this / the flow's
    # calibration, ``GlowFlow.latent_radius``); a budget, scaled per data set like eps_train
    eps_z_pixel: float = field(default=1 / 255, metadata=EPS)
    attack_steps: int = 5  # K, joint-attack PGD steps
    step_factor: float = 2.5  # step sizes: step_factor·ε_x/K in pixels, step_factor·ε_z/K in latents
    mixup_alpha: float = 1.0  # λ ~ Beta(α, α)
    mixup_prob: float = 0.5  # probability that a batch gets the robust-mixup term
    mixup_space: str = "latent"  # where pairs are interpolated, one of MIXUP_SPACES
    clean_weight: float = 0.0  # weight of CE on clean images
    joint_weight: float = 1.0  # weight of CE on joint-space adversarial examples
    mix_weight: float = 1.0  # weight of the mixed-label CE on attacked interpolates
    # latent radius of the on-manifold evaluation attack (fixed per search), in the same
    # calibrated pixel units as eps_z_pixel and scaled per data set
    eval_eps_z_pixel: float = field(default=2 / 255, metadata=EPS)
    eval_steps: int = 20  # PGD steps of the on-manifold evaluation attack
    # flow: a fixed per-data-set setting (0: by image size), trained once and cached
    flow_levels: int = 0  # multiscale levels; 0: 2 for images ≤ 16 px, 3 otherwise, fewer where
    # the side is not divisible by 2^levels (28 px: 2)
    flow_blocks: int = 0  # Glow blocks per level; 0: 4 for images ≤ 16 px, 8 otherwise
    flow_hidden: int = 0  # coupling-net channels; 0: 32 for images ≤ 16 px, 256 otherwise
    flow_epochs: int = 0  # maximum-likelihood passes; 0: 30 for images ≤ 16 px, 100 otherwise
    flow_lr: float = 1e-3  # Adam
    flow_batch_size: int = 128  # examples per maximum-likelihood step
    # the gate a trained flow must pass to be cached: bits/dim on held-out images at most this;
    # 0: by data set (MAX_BITS_PER_DIM)
    flow_max_bits_per_dim: float = 0.0


def mixed_ce_sum(logits: torch.Tensor, target) -> torch.Tensor:
    """Σ λ·CE(·, y_a) + (1−λ)·CE(·, y_b) for target = (y_a, y_b, λ) with per-example λ."""
    ya, yb, lam = target
    return (lam * functional.cross_entropy(logits, ya, reduction="none")
            + (1 - lam) * functional.cross_entropy(logits, yb, reduction="none")).sum()


def joint_attack(flow: GlowFlow, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y,
                 eps_x: float, eps_z: float, steps: int, step_factor: float = 2.5, *,
                 loss_fn: Callable = ce_sum, z: list[torch.Tensor] | None = None,
                 random_start: bool = True, return_deltas: bool = False):
    """Joint Space Attack: PGD on (δ_z, δ_x) of x' = clip(G(F(x) + δ_z) + δ_x, 0, 1), with
    ``eps_z`` in latent units (``GlowFlow.latent_radius`` converts a calibrated radius).

    ``loss_fn(logits, y)`` is maximized (summed over the batch; ``y`` is passed through, so a
    tuple target works, see ``mixed_ce_sum``). ``z``: latents of ``x`` if already known
    (F is skipped). Step sizes are step_factor·ε/steps for each part. eps_x = 0 gives the
    on-manifold attack, eps_z = 0 plain L∞ PGD (the flow is then not used). Returns x' detached,
    or (x', δ_z list, δ_x) with ``return_deltas``. ``model`` is used as is (callers set eval
    mode); the flow must be frozen."""
    x = x.detach()
    use_z = eps_z > 0
    if use_z:
        with torch.no_grad():
            z = flow.encode(x) if z is None else z
        z = [t.detach().float() for t in z]

    def start(ref: torch.Tensor, eps: float) -> torch.Tensor:
        d = torch.empty_like(ref).uniform_(-eps, eps) if random_start and eps > 0 else torch.zeros_like(ref)
        return d.requires_grad_(eps > 0)

    dx = start(x, eps_x)
    dz = [start(t, eps_z) for t in z] if use_z else []
    leaves = ([dx] if eps_x > 0 else []) + dz

    def image(track: bool) -> torch.Tensor:
        with torch.set_grad_enabled(track):
            base = flow.decode([t + d for t, d in zip(z, dz)]) if use_z else x
        with torch.no_grad():
            # keep base + δ_x inside [0, 1] (as PGD does): a pixel pushed past the box would get
            # no gradient through the clip and stay stuck there
            dx.copy_(((base.detach() + dx).clamp(0, 1) - base.detach()).clamp(-eps_x, eps_x))
        img = base + dx
        # clip with an identity gradient: torch's clamp passes no gradient at exactly 0 or 1,
        # where most digit pixels sit, and the projection above already makes the clip tiny
        return img + (img.clamp(0, 1) - img).detach()

    ax, az = (step_factor * eps_x / steps, step_factor * eps_z / steps) if steps > 0 else (0.0, 0.0)
    for _ in range(steps if leaves else 0):
        loss = loss_fn(model(image(True)), y)
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            for d, g in zip(leaves, grads):
                step, eps = (ax, eps_x) if d is dx else (az, eps_z)
                d.add_(step * g.sign()).clamp_(-eps, eps)
    with torch.no_grad():
        x_adv = image(False)
    if return_deltas:
        return x_adv, [d.detach() for d in dz], dx.detach()
    return x_adv


@torch.no_grad()
def interpolate(flow: GlowFlow, x: torch.Tensor, z: list[torch.Tensor] | None, perm: torch.Tensor,
                lam: torch.Tensor, space: str) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Robust-mixup interpolates of the pairs (x, x[perm]) with per-pair weights ``lam``:
    latent space G(λF(x_i) + (1−λ)F(x_j)) (``z`` = F(x)), or pixel space λx_i + (1−λ)x_j.
    Returns (x̃ in [0, 1], latents of x̃ or None when ``z`` is None)."""
    lv = lam.view(-1, 1, 1, 1)
    if space == "latent":
        zm = [lv * t + (1 - lv) * t[perm] for t in z]
        return flow.decode(zm).clamp(0, 1), zm
    if space == "pixel":
        xm = lv * x + (1 - lv) * x[perm]
        return xm, (flow.encode(xm) if z is not None else None)
    raise ValueError(f"mixup_space must be one of {MIXUP_SPACES}, got {space!r}")


class IJSAT(Defense):
    name = "ijsat"
    Config = Config
    summary = "Lau et al. 2023: joint pixel+latent (flow) adversarial training with robust mixup"

    def build(self, cfg, spec):
        nets = super().build(cfg, spec)
        s = flow_setting(cfg, spec)
        nets["flow"] = GlowFlow(spec.channels, spec.size, s["levels"], s["blocks"], s["hidden"])
        return nets

    def pretrained(self, cfg, spec):
        key = {**flow_setting(cfg, spec), "lr": cfg.flow_lr, "batch_size": cfg.flow_batch_size,
               "calibration_radius": CALIBRATION_RADIUS}
        return [Component("flow", ("flow",), key, fit_flow, check_flow)]

    def train_step(self, ctx, x, y):
        cfg, f, flow = ctx.cfg, ctx.raw["classifier"], ctx.raw["flow"]
        n = x.shape[0]
        lam = torch.ones(n, device=x.device)
        ya, yb, points, latents = y, y, x, None
        mix = cfg.mix_weight > 0 and float(torch.rand(())) < cfg.mixup_prob
        eps_z = flow.latent_radius(cfg.eps_z_pixel)
        with torch.no_grad():
            z = flow.encode(x) if eps_z > 0 or (mix and cfg.mixup_space == "latent") else None
        if mix:
            # the attacked interpolates join the batch: one joint attack over 2n points
            perm = torch.randperm(n, device=x.device)
            beta = torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha)
            lam_m = beta.sample((n,)).to(x.device)
            xm, zm = interpolate(flow, x, z, perm, lam_m, cfg.mixup_space)
            points = torch.cat([x, xm])
            ya, yb, lam = torch.cat([y, y]), torch.cat([y, y[perm]]), torch.cat([lam, lam_m])
            if z is not None:
                latents = [torch.cat([a, b]) for a, b in zip(z, zm)]
        elif z is not None:
            latents = z
        with eval_mode(f):
            x_adv = joint_attack(flow, f, points, (ya, yb, lam), cfg.eps_train, eps_z,
                                 cfg.attack_steps, cfg.step_factor, loss_fn=mixed_ce_sum, z=latents)
        use_clean = cfg.clean_weight > 0
        with ctx.autocast():
            logits = ctx.nets["classifier"](torch.cat([x, x_adv]) if use_clean else x_adv)
            if use_clean:
                clean_logits, logits = logits[:n], logits[n:]
            joint = functional.cross_entropy(logits[:n], y)
            loss = cfg.joint_weight * joint
            out = {"joint_ce": joint.item()}
            if use_clean:
                clean = functional.cross_entropy(clean_logits, y)
                loss = loss + cfg.clean_weight * clean
                out["clean_ce"] = clean.item()
            # same keys every batch: mix_ce is 0 on batches without the mixup term
            out["mixed"], out["mix_ce"] = float(mix), 0.0
            if mix:
                mixed = mixed_ce_sum(logits[n:], (ya[n:], yb[n:], lam[n:])) / n
                loss = loss + cfg.mix_weight * mixed
                out["mix_ce"] = mixed.item()
        sgd_step(ctx.opts["classifier"], loss, ctx.scheds["classifier"])
        return {"loss": loss.item(), **out}

    def extra_attacks(self, nets, cfg):
        flow = nets["flow"]

        def on_manifold(model, x, y, eps):
            """On-manifold PGD (δ_x = 0) with latent radius cfg.eval_eps_z_pixel (calibrated
            pixel units); ``eps`` (a pixel radius) does not bound an on-manifold example and is
            not used."""
            return joint_attack(flow, model, x, y, 0.0, flow.latent_radius(cfg.eval_eps_z_pixel), cfg.eval_steps)

        # what the results record: a latent L∞ ball whose radius is in calibrated pixel units
        on_manifold.eps, on_manifold.norm = cfg.eval_eps_z_pixel, "latent_px"
        return {"on_manifold": on_manifold}
