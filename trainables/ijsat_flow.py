"""IJSAT's normalizing flow: a Glow-style multiscale flow (``normflows``: actnorm, invertible 1×1
conv, affine coupling, squeeze/split) on [0, 1] images, its size per data set, its maximum-
likelihood fit, and the gate and calibration it passes before it is cached (bits/dim at most a
per-data-set bound, round trip G(F(x)) within 1/255, the RMS pixel displacement per unit latent
radius stored in the flow). Always run in strict fp32. The defense itself: trainables.ijsat."""
from __future__ import annotations

import contextlib
import logging
import math
import warnings

import normflows as nf
import torch
from torch import nn

from trainables.spec import DataSpec

log = logging.getLogger("trainables.ijsat")
# normflows' LU-parametrized 1×1 convolution calls the deprecated torch.lu; nothing a user can act on
warnings.filterwarnings("ignore", message="torch.lu is deprecated", category=UserWarning)


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
