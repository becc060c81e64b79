"""AToP — Adversarial Training on Purification (Lin et al., ICLR 2024).

Deployed pipeline: ``predict(x) = f(g(t(x)))``. ``t`` is a random transform drawn afresh at
every call (training and inference): Gaussian noise of std ``noise_sigma`` (clipped to [0, 1]),
then a random block mask that erases a fraction ``missing_rate`` of ``block``×``block`` blocks;
the mask is an extra input channel of the purifier. ``g`` is a small U-Net inpainter at native
resolution (the accepted substitute for DeepFillv2), ``f`` a classifier trained once with
standard training and then frozen.

Two cached components serve every trial of a search: the classifier, and the purifier with its
spectral-norm PatchGAN discriminator, pre-trained as an inpainter (masked + noisy -> clean,
L1 + GAN hinge) over a spread of transform strengths (σ, missing rate and block size drawn per
batch from the search ranges), so no searched value enters its key. A trial then fine-tunes
the purifier and discriminator only:

    L_g = hinge_G + L1(x, g(t(x))) + L1(x, g(t(x'))) + λ_cls·CE(f(g(t(x'))), y),

with x' from FGSM on the bare classifier (the reference's cheap choice) or PGD with EOT through
g∘t (``ft_attack="pgd_eot_through"``), λ_cls ramped up linearly over ``warmup_epochs``, and the
discriminator stepped every batch. The predictor averages logits over ``n_masks`` transform
draws and is randomized, so it must be attacked with EOT. Expect the noise σ to do most of the
robustness work: larger σ and missing rate raise robust accuracy and cost clean accuracy.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
from torch.nn import functional
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from trainables.base import BaseConfig, Component, Defense, Predictor, sgd_step
from trainables.common import eval_mode, fgsm, pgd_linf
from trainables.spec import DataSpec

log = logging.getLogger(__name__)

FT_ATTACKS = ("fgsm_classifier", "pgd_eot_through")
BLOCKS = (1, 2, 4, 8)  # mask block sides searched, px at 32×32; pre-training covers them all
REFERENCE_SIZE = 32  # image side at which ``block`` is written, px


@dataclass(frozen=True)
class Config(BaseConfig):
    noise_sigma: float = 0.25  # std of the Gaussian noise of t, on the [0, 1] pixel scale
    missing_rate: float = 0.25  # fraction of mask blocks erased by t
    block: int = 4  # mask block side, px at 32×32; scaled to the image (8×8 digits: 4 -> 1 px)
    n_masks: int = 1  # transform draws whose logits the predictor averages
    lambda_cls: float = 0.1  # weight of CE(f(g(t(x'))), y) after warm-up
    warmup_epochs: float = 2.0  # epochs of linear λ_cls ramp from 0
    gan_weight: float = 1.0  # weight of the generator hinge loss (fine-tuning)
    ft_attack: str = "fgsm_classifier"  # how x' is crafted, one of FT_ATTACKS
    ft_attack_steps: int = 5  # PGD steps of pgd_eot_through (step 2.5·ε/steps)
    ft_eot: int = 2  # transform draws averaged per gradient in pgd_eot_through
    purifier_lr: float = 1e-4  # Adam learning rate of purifier and discriminator (fine-tuning)
    purifier_width: int = 0  # U-Net base channels; 0: 8 for images ≤ 16 px, 64 otherwise
    # pre-training of the cached components (never searched: they key the cache)
    pretrain_batch_size: int = 128  # examples per step of both pre-trainings
    cls_epochs: int = 15  # standard training of the classifier, SGD at ``lr``
    pretrain_epochs: int = 40  # inpainter pre-training passes over the training split
    pretrain_lr: float = 1e-3  # Adam, purifier and discriminator
    pretrain_gan_weight: float = 0.1  # hinge weight while pre-training (L1 weight 1)
    pretrain_sigma_max: float = 0.5  # σ ~ U(0, this) per pre-training batch
    pretrain_missing_max: float = 0.75  # missing rate ~ U(0, this) per pre-training batch


def block_px(block: int, size: int) -> int:
    """A block side written at 32×32, in pixels of a ``size``-pixel image (at least 1)."""
    return max(1, round(block * size / REFERENCE_SIZE))


def _scaling_error(block: int, size: int) -> float:
    """How far ``block_px`` rounds: pixels between the exact scaled side and the one used."""
    return abs(block_px(block, size) - block * size / REFERENCE_SIZE)


def random_transform(x: torch.Tensor, sigma: float, missing_rate: float, block: int):
    """t(x): noise then block mask, fresh randomness on every call.

    Returns (transformed image, mask) with mask = 1 on erased pixels, 0 elsewhere, shape
    N×1×H×W. Exactly round(missing_rate · blocks) blocks are erased per image."""
    n, _, h, w = x.shape
    x = (x + sigma * torch.randn_like(x)).clamp(0, 1) if sigma > 0 else x
    side = block_px(block, w)
    gh, gw = math.ceil(h / side), math.ceil(w / side)
    k = min(gh * gw, round(missing_rate * gh * gw))
    erased = torch.zeros(n, gh * gw, device=x.device, dtype=x.dtype)
    if k > 0:
        idx = torch.rand(n, gh * gw, device=x.device).topk(k, dim=1).indices
        erased.scatter_(1, idx, 1.0)
    mask = erased.view(n, 1, gh, gw).repeat_interleave(side, 2).repeat_interleave(side, 3)[:, :, :h, :w]
    return x * (1 - mask), mask


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout // 4), cout), nn.LeakyReLU(0.2),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(min(8, cout // 4), cout), nn.LeakyReLU(0.2),
    )


class UNetInpainter(nn.Module):
    """g(image, mask) -> image in [0, 1]: a two-level U-Net at native resolution (no BN, so
    train and eval mode compute the same function)."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        w = width
        self.inc = _conv_block(channels + 1, w)
        self.down1 = _conv_block(w, 2 * w)
        self.down2 = _conv_block(2 * w, 4 * w)
        self.up2 = _conv_block(4 * w + 2 * w, 2 * w)
        self.up1 = _conv_block(2 * w + w, w)
        self.out = nn.Conv2d(w, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h0 = self.inc(torch.cat([x, mask], 1))
        h1 = self.down1(functional.avg_pool2d(h0, 2))
        h2 = self.down2(functional.avg_pool2d(h1, 2))
        u2 = self.up2(torch.cat([functional.interpolate(h2, size=h1.shape[-2:]), h1], 1))
        u1 = self.up1(torch.cat([functional.interpolate(u2, size=h0.shape[-2:]), h0], 1))
        return torch.sigmoid(self.out(u1))


class PatchDiscriminator(nn.Module):
    """Spectral-norm PatchGAN on [image, mask]: one real/fake logit per patch."""

    def __init__(self, channels: int, size: int, width: int):
        super().__init__()
        n_down = max(1, int(math.log2(size)) - 3)  # 8 px -> 4×4 patches, 32 px -> 8×8
        layers, c = [spectral_norm(nn.Conv2d(channels + 1, width, 3, 1, 1)), nn.LeakyReLU(0.2)], width
        for _ in range(n_down):
            layers += [spectral_norm(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c *= 2
        layers.append(spectral_norm(nn.Conv2d(c, 1, 3, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, mask], 1))


class Purified(nn.Module):
    """f∘g∘t on [0, 1] images -> logits averaged over ``n_masks`` transform draws; fresh
    transforms on every call, differentiable end to end. ``bpda``: the same forward pass, with
    g∘t taken as the identity in the backward pass (the gradient of f at the purified image
    goes to the input unchanged), the BPDA attack on purification."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module, sigma: float,
                 missing_rate: float, block: int, n_masks: int, bpda: bool = False):
        super().__init__()
        self.purifier, self.classifier = purifier, classifier
        self.sigma, self.missing_rate, self.block, self.n_masks = sigma, missing_rate, block, n_masks
        self.bpda = bpda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reps = x.repeat(self.n_masks, 1, 1, 1)
        xt, mask = random_transform(reps, self.sigma, self.missing_rate, self.block)
        purified = self.purifier(xt, mask)
        if self.bpda:
            purified = reps + (purified - reps).detach()
        logits = self.classifier(purified)
        return logits.view(self.n_masks, x.shape[0], -1).mean(0)


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return functional.relu(1 - real).mean() + functional.relu(1 + fake).mean()


def _purifier_width(cfg, spec: DataSpec) -> int:
    return cfg.purifier_width or (8 if spec.size <= 16 else 64)


def _adam(module: nn.Module, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=lr, betas=(0.5, 0.999))


def fit_classifier(nets, cfg, spec, batches, device) -> None:
    """Standard training of the classifier: CE on clean images, the base SGD recipe."""
    f = nets["classifier"].to(device).train()
    bs = cfg.pretrain_batch_size
    steps = cfg.cls_epochs * sum(1 for _ in batches(bs))
    opts, scheds = Defense().optimizers({"classifier": f}, dataclasses.replace(cfg, batch_size=bs), steps)
    for _ in range(cfg.cls_epochs):
        for x, y in batches(bs):
            loss = functional.cross_entropy(f(x), y)
            sgd_step(opts["classifier"], loss, scheds["classifier"])
    log.info("atop classifier: final CE %.4f", loss.item())


def fit_purifier(nets, cfg, spec, batches, device) -> None:
    """Inpainter pre-training: masked + noisy -> clean with L1 + hinge GAN loss, σ, missing
    rate and block size drawn per batch so one purifier serves every searched transform."""
    g = nets["purifier"].to(device).train()
    d = nets["discriminator"].to(device).train()
    opt_g, opt_d = _adam(g, cfg.pretrain_lr), _adam(d, cfg.pretrain_lr)
    for _ in range(cfg.pretrain_epochs):
        for x, _ in batches(cfg.pretrain_batch_size):
            sigma = float(torch.rand(())) * cfg.pretrain_sigma_max
            rate = float(torch.rand(())) * cfg.pretrain_missing_max
            block = BLOCKS[int(torch.randint(len(BLOCKS), ()))]
            xt, mask = random_transform(x, sigma, rate, block)
            out = g(xt, mask)
            scores = d(torch.cat([x, out.detach()]), mask.repeat(2, 1, 1, 1))
            loss_d = hinge_d(*scores.chunk(2))
            sgd_step(opt_d, loss_d)
            l1 = (out - x).abs().mean()
            loss_g = l1 - cfg.pretrain_gan_weight * d(out, mask).mean()
            sgd_step(opt_g, loss_g)
    log.info("atop purifier pre-training: final L1 %.4f, D hinge %.4f", l1.item(), loss_d.item())


class AToP(Defense):
    name = "atop"
    Config = Config
    summary = "Lin et al. 2024: adversarially fine-tuned generative purifier f(g(t(x)))"
    randomized = True

    def build(self, cfg, spec):
        nets = super().build(cfg, spec)
        width = _purifier_width(cfg, spec)
        nets["purifier"] = UNetInpainter(spec.channels, width)
        nets["discriminator"] = PatchDiscriminator(spec.channels, spec.size, width)
        return nets

    def pretrained(self, cfg, spec):
        cls_key = {k: getattr(cfg, k) for k in
                   ("cls_epochs", "lr", "momentum", "weight_decay", "pretrain_batch_size")}
        pur_key = {"width": _purifier_width(cfg, spec), "blocks": BLOCKS,
                   **{k: getattr(cfg, k) for k in
                      ("pretrain_epochs", "pretrain_lr", "pretrain_gan_weight",
                       "pretrain_sigma_max", "pretrain_missing_max", "pretrain_batch_size")}}
        return [Component("classifier", ("classifier",), cls_key, fit_classifier),
                Component("purifier", ("purifier", "discriminator"), pur_key, fit_purifier)]

    def search_space(self, space, spec):
        """``block`` with one choice per distinct mask block on this data set: choices written
        at 32×32 that come to the same pixel side here (1, 2 and 4 are all 1 px on 8×8 digits)
        would be one transform under several names, so the sampler would spend trials telling
        identical configurations apart. Of each such group the choice whose exact scaled side is
        nearest its pixel side is kept (on digits 4 and 8: 1 and 2 px)."""
        if "block" not in space:
            return space
        kept: dict[int, int] = {}
        for block in space["block"]["choices"]:
            px = block_px(block, spec.size)
            if px not in kept or _scaling_error(block, spec.size) < _scaling_error(kept[px], spec.size):
                kept[px] = block
        return {**space, "block": {**space["block"], "choices": sorted(kept.values())}}

    def trainable(self, cfg):
        return ("purifier", "discriminator")

    def optimizers(self, nets, cfg, total_steps):
        return ({"purifier": _adam(nets["purifier"], cfg.purifier_lr),
                 "discriminator": _adam(nets["discriminator"], cfg.purifier_lr)}, {})

    def pipeline(self, nets, cfg, n_masks: int | None = None, bpda: bool = False) -> Purified:
        return Purified(nets["purifier"], nets["classifier"], cfg.noise_sigma, cfg.missing_rate,
                        cfg.block, cfg.n_masks if n_masks is None else n_masks, bpda)

    def adversarial(self, ctx, x, y) -> torch.Tensor:
        """x' for fine-tuning: FGSM on the bare classifier, or PGD-EOT through g∘t."""
        cfg, f = ctx.cfg, ctx.raw["classifier"]
        if cfg.ft_attack == "fgsm_classifier":
            with eval_mode(f):
                return fgsm(f, x, y, cfg.eps_train)
        if cfg.ft_attack == "pgd_eot_through":
            with eval_mode(f, ctx.raw["purifier"]):
                return pgd_linf(self.pipeline(ctx.raw, cfg, 1), x, y, cfg.eps_train,
                                cfg.ft_attack_steps, eot=cfg.ft_eot)
        raise ValueError(f"ft_attack must be one of {FT_ATTACKS}, got {cfg.ft_attack!r}")

    def train_step(self, ctx, x, y):
        cfg, f = ctx.cfg, ctx.raw["classifier"]
        n = x.shape[0]
        x_adv = self.adversarial(ctx, x, y)
        # clean and adversarial inputs share one purifier pass (one DDP forward per backward)
        xt, mask = random_transform(torch.cat([x, x_adv]), cfg.noise_sigma, cfg.missing_rate, cfg.block)
        target = torch.cat([x, x])
        with ctx.autocast():
            out = ctx.nets["purifier"](xt, mask)
            scores = ctx.nets["discriminator"](torch.cat([target, out.detach()]), mask.repeat(2, 1, 1, 1))
            loss_d = hinge_d(*scores.chunk(2))
        sgd_step(ctx.opts["discriminator"], loss_d)
        ramp = min(1.0, (ctx.step + 1) / max(1.0, cfg.warmup_epochs * ctx.steps_per_epoch))
        with ctx.autocast(), eval_mode(f):
            # the generator term reads the discriminator unwrapped: its gradient only feeds g
            hinge_g = -ctx.raw["discriminator"](out, mask).mean()
            l1_clean = (out[:n] - x).abs().mean()
            l1_adv = (out[n:] - x).abs().mean()
            ce = functional.cross_entropy(f(out[n:]), y)
            loss_g = cfg.gan_weight * hinge_g + l1_clean + l1_adv + cfg.lambda_cls * ramp * ce
        sgd_step(ctx.opts["purifier"], loss_g)
        return {"loss_g": loss_g.item(), "loss_d": loss_d.item(), "hinge_g": hinge_g.item(),
                "l1_clean": l1_clean.item(), "l1_adv": l1_adv.item(), "ce_adv": ce.item(),
                "lambda_cls": cfg.lambda_cls * ramp}

    def predictor(self, nets, cfg):
        return Predictor(self.pipeline(nets, cfg), randomized=True, bpda=self.pipeline(nets, cfg, bpda=True),
                         draws_per_call=cfg.n_masks)
