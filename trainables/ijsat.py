"""IJSAT — Interpolated Joint Space Adversarial Training (Lau et al., TPAMI 2023).

An exactly invertible Glow-style multiscale normalizing flow (``normflows``: actnorm,
invertible 1×1 conv, affine coupling, squeeze/split) is trained once per data set by maximum
likelihood and frozen; it is a cached component, run in fp32. With encoder F (image -> list of
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

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import normflows as nf
import torch
from torch.nn import functional
from torch import nn

from trainables.base import EPS, BaseConfig, Component, Defense, sgd_step
from trainables.common import ce_sum, eval_mode
from trainables.spec import DataSpec

log = logging.getLogger(__name__)
# normflows' LU-parametrized 1×1 convolution calls the deprecated torch.lu; nothing a user can act on
warnings.filterwarnings("ignore", message="torch.lu is deprecated", category=UserWarning)

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


def flow_setting(cfg, spec: DataSpec) -> dict[str, int]:
    """The flow's size for ``spec``: the config's values, or by image size. Each level halves the
    image side, so the levels are at most as many as 2 divides the side (28 px: 2), and at least 1
    (an odd side is refused by GlowFlow)."""
    small = spec.size <= 16
    levels = 2 if small else 3
    while levels > 1 and spec.size % 2 ** levels:
        levels -= 1
    return {"levels": cfg.flow_levels or levels,
            "blocks": cfg.flow_blocks or (4 if small else 8),
            "hidden": cfg.flow_hidden or (32 if small else 256),
            "epochs": cfg.flow_epochs or (30 if small else 100)}


@contextlib.contextmanager
def strict_fp32(device_type: str):
    """fp32 without autocast and, on CUDA, without TF32 (which cuDNN convolutions use by
    default): the 1×1 convolutions of a deep flow lose the round trip G(F(x)) = x at TF32's
    10-bit mantissa. Gradients computed later, outside this context, may still use TF32."""
    with torch.autocast(device_type, enabled=False):
        if device_type != "cuda":
            yield
            return
        conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


class GlowFlow(nn.Module):
    """Glow multiscale flow on [0, 1] images: ``encode`` = F (image -> latents, one tensor per
    level), ``decode`` = G = F⁻¹, ``nll`` the per-image negative log-likelihood in nats. Always
    computed in strict fp32 (``strict_fp32``), whatever autocast or TF32 setting is active.
    ``pixel_per_latent`` (a buffer, so it travels with the cached weights) is the flow's ε_z
    calibration, set by ``calibrate``; 0 until then."""

    def __init__(self, channels: int, size: int, levels: int, blocks: int, hidden: int):
        super().__init__()
        if size % 2 ** levels:
            raise ValueError(f"image side {size} must be divisible by 2^levels = {2 ** levels}")
        flows, merges, q0 = [], [], []
        for i in range(levels):
            level = [nf.flows.GlowBlock(channels * 2 ** (levels + 1 - i), hidden,
                                        split_mode="channel", scale=True,
                                        scale_map="sigmoid_inv") for _ in range(blocks)]
            flows.append(level + [nf.flows.Squeeze()])
            if i > 0:
                merges.append(nf.flows.Merge())
                shape = (channels * 2 ** (levels - i), size // 2 ** (levels - i), size // 2 ** (levels - i))
            else:
                shape = (channels * 2 ** (levels + 1), size // 2 ** levels, size // 2 ** levels)
            q0.append(nf.distributions.DiagGaussian(shape, trainable=False))
        self.net = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
        self.register_buffer("pixel_per_latent", torch.zeros(()))
        # identity ActNorm until fit() initializes it from data: a built but untrained flow
        # must not change its parameters on the first call
        self.set_actnorm_initialized(True)

    def latent_radius(self, pixel: float) -> float:
        """ε_z in latent units for a radius in calibrated pixel units (RMS pixel displacement)."""
        per_latent = float(self.pixel_per_latent)
        if per_latent <= 0:
            raise RuntimeError("ijsat: the flow is not calibrated; a flow from the component cache is")
        return pixel / per_latent

    def set_actnorm_initialized(self, done: bool) -> None:
        for m in self.modules():
            if isinstance(m, nf.flows.ActNorm):
                m.data_dep_init_done.fill_(1.0 if done else 0.0)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        with strict_fp32(x.device.type):
            z, _ = self.net.inverse_and_log_det(x.float() - 0.5)
        return z

    def decode(self, z: list[torch.Tensor]) -> torch.Tensor:
        with strict_fp32(z[0].device.type):
            x, _ = self.net.forward_and_log_det([t.float() for t in z])
        return x + 0.5

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        with strict_fp32(x.device.type):
            return -self.net.log_prob(x.float() - 0.5, None)


def grey_level(x: torch.Tensor) -> float:
    """The quantization step of a batch of images (1/16 for digits, 1/255 for 8-bit data)."""
    levels = torch.unique(x)
    steps = levels.diff()
    return float(steps.min()) if steps.numel() else 1 / 255


def fit_flow(nets, cfg, spec, batches, device) -> None:
    """Maximum likelihood on uniformly dequantized training images, ActNorm initialized from
    the first batch (Glow's data-dependent init)."""
    setting = flow_setting(cfg, spec)
    flow = nets["flow"].to(device).train()
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.flow_lr)
    quantum = None
    for epoch in range(setting["epochs"]):
        total, count = 0.0, 0
        for x, _ in batches(cfg.flow_batch_size):
            if quantum is None:
                quantum = grey_level(x)
                flow.set_actnorm_initialized(False)
                with torch.no_grad():
                    flow.encode(x + (torch.rand_like(x) - 0.5) * quantum)
            xd = x + (torch.rand_like(x) - 0.5) * quantum
            loss = flow.nll(xd).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 100.0)
            opt.step()
            total, count = total + loss.item() * len(x), count + len(x)
    dims = spec.channels * spec.size ** 2
    # nats per dim of the dequantized density, plus the log of the bin width: a discrete NLL
    log.info("ijsat flow: %.3f bits/dim after %d epochs",
             (total / count / dims - math.log(quantum)) / math.log(2), setting["epochs"])
    flow.eval()


# the gate a trained flow passes before it is cached: bits/dim on held-out images at most
# MAX_BITS_PER_DIM[data set] (Glow-class flows reach about 3.35 on CIFAR-10, 2.1 on SVHN and 1.05
# on MNIST; this project's default flow reaches 2.8 on digits, whose 17 grey levels hold 4.1 bits;
# an untrained flow scores 5.1 there and about 9 on 8-bit images), and a round trip G(F(x))
# within 1/255 of x (max abs) at the working size. Other data: 5 of the 8 bits an 8-bit pixel
# holds (in general 0.625·log2 of the grey levels). ``flow_max_bits_per_dim`` overrides it.
MAX_BITS_PER_DIM = {"digits": 3.5, "mnist": 3.0, "fashion_mnist": 4.5, "svhn": 4.0, "cifar10": 5.0,
                    "cifar100": 5.0}
ROUND_TRIP = 1 / 255
HELD_OUT = 1000  # held-out images the gate and the calibration use, at most
# latent L∞ radius at which the calibration measures the pixel displacement (the flows here are
# close to linear there: on digits the ratio moves by under 3% between radii 0.01 and 0.5)
CALIBRATION_RADIUS = 0.05


class FlowRefused(RuntimeError):
    """A trained flow that fails the gate: not cached; the message is one line for the user."""


def max_bits_per_dim(cfg, spec: DataSpec, quantum: float) -> float:
    if cfg.flow_max_bits_per_dim > 0:
        return cfg.flow_max_bits_per_dim
    return MAX_BITS_PER_DIM.get(spec.name, 0.625 * math.log2(1 / quantum))


def _chunks(x: torch.Tensor, batch: int):
    return (x[i:i + batch] for i in range(0, len(x), batch))


@torch.no_grad()
def bits_per_dim(flow: GlowFlow, x: torch.Tensor, quantum: float, batch: int = 128) -> float:
    """Discrete negative log-likelihood of images on a ``quantum`` grid (1/255 for 8-bit) in bits
    per dimension, under the flow's density with one fixed uniform dequantization draw:
    (NLL/dims − ln quantum) / ln 2."""
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for xb in _chunks(x, batch):
        noise = (torch.rand(xb.shape, generator=gen) - 0.5).to(xb.device) * quantum
        total += flow.nll(xb + noise).sum().item()
    return (total / len(x) / x[0].numel() - math.log(quantum)) / math.log(2)


@torch.no_grad()
def round_trip_error(flow: GlowFlow, x: torch.Tensor, batch: int = 128) -> float:
    """max |G(F(x)) − x| over the images."""
    return max((flow.decode(flow.encode(xb)) - xb).abs().max().item() for xb in _chunks(x, batch))


@torch.no_grad()
def calibrate(flow: GlowFlow, x: torch.Tensor, radius: float = CALIBRATION_RADIUS,
              batch: int = 128) -> dict[str, float]:
    """Measure and store the flow's ε_z calibration: the RMS pixel displacement
    ‖G(F(x) + δ_z) − G(F(x))‖₂/√dims per unit latent radius, averaged over the images, for δ_z a
    random corner of the latent L∞ box of ``radius`` (every entry ±radius: where PGD's signed
    steps end). RMS per pixel does not grow with the number of pixels, so a radius in these
    units means the same for an 8×8 and a 32×32 flow. Also returns the mean L∞ displacement per
    unit radius, for comparison with pixel budgets."""
    gen = torch.Generator().manual_seed(0)
    rms, linf = [], []
    for xb in _chunks(x, batch):
        z = flow.encode(xb)
        signs = [(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t) for t in z]
        moved = flow.decode([t + radius * s for t, s in zip(z, signs)]) - flow.decode(z)
        rms.append(moved.flatten(1).pow(2).mean(1).sqrt())
        linf.append(moved.flatten(1).abs().amax(1))
    per_latent = torch.cat(rms).mean().item() / radius
    flow.pixel_per_latent.fill_(per_latent)
    return {"pixel_rms_per_latent": per_latent, "pixel_linf_per_latent": torch.cat(linf).mean().item() / radius,
            "calibration_radius": radius}


def check_flow(nets, cfg, spec: DataSpec, held_out: torch.Tensor, device) -> dict:
    """The gate before the flow is cached, then its calibration: bits/dim on ``held_out`` images
    at most ``max_bits_per_dim`` and the round trip within ROUND_TRIP, or FlowRefused; returns
    the numbers (stored with the component and logged)."""
    flow = nets["flow"].eval()
    x = held_out[:HELD_OUT].to(device)
    quantum = grey_level(x)
    bpd, bound, trip = bits_per_dim(flow, x, quantum), max_bits_per_dim(cfg, spec, quantum), round_trip_error(flow, x)
    log.info("ijsat flow: %.3f bits/dim on %d images (bound %g), round trip %.2g", bpd, len(x), bound, trip)
    problems = []
    if not bpd <= bound:  # NaN fails too
        problems.append(f"{bpd:.3f} bits/dim on {len(x)} images, above the bound {bound:g} for "
                        f"{spec.name} (flow_max_bits_per_dim)")
    if not trip < ROUND_TRIP:
        problems.append(f"G(F(x)) misses x by {trip:.3g} (max abs), not within 1/255")
    report = {"n": len(x), "bits_per_dim": bpd, "max_bits_per_dim": bound, "round_trip": trip}
    if not problems:
        report.update(calibrate(flow, x))
        if not 0 < report["pixel_rms_per_latent"] < math.inf:
            problems.append(f"latent steps move no pixel (calibration {report['pixel_rms_per_latent']:.3g})")
    if problems:
        raise FlowRefused("ijsat flow refused, not cached: " + "; ".join(problems)
                          + "; train it longer (flow_epochs) or larger (flow_blocks, flow_hidden)")
    log.info("ijsat flow: calibration %.4g RMS pixels per unit latent radius", report["pixel_rms_per_latent"])
    return report


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
