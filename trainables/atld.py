"""Adversarial Training with Latent Distribution (Qian et al., "Improving model robustness with
latent distribution locally and globally"): a discriminator on the classifier's latent space
estimates the divergence between natural and perturbed latents; the training perturbation is
found without labels by maximizing that estimate.

Each batch:

1. latent attack (no labels): a random start in the ε-ball, then ``attack_steps`` signed steps
   (of size ε for one, 2.5·ε/k for k > 1) that lower D's BCE (natural -> 1, perturbed -> 0),
   i.e. push the perturbed latent where D finds it most unnatural; computed on an eval-mode
   view of f (no parameter gradients);
2. classifier: CE(f(x_adv), label-smoothed y) + γ·s·MSE(f(x_adv), f(x)), s = max|∇ₓCE| /
   max|∇ₓMSE| per batch (an adaptive balance, capped); the target f(x) is held fixed and comes
   from a training-mode pass of its own over the natural batch (with BN statistics shared with
   f(x_adv), the held-fixed target ignored how the MSE's gradient moved it, and the logits blew
   up);
3. discriminator: ``d_steps`` SGD steps on BCE(natural -> 1, adversarial -> 0) plus a K-way class
   head's CE on both latents, taken from the eval-mode view (the one the attack and IMT use).

The latent is the classifier's logits (as in the reference) or its penultimate features. D is an
MLP with two heads (a faithful substitute for the reference's WRN on 1×1 maps).

Optional test-time step (IMT): one signed step of size ``imt_step`` toward "D says natural",
halved where D's natural probability lies in (0.3, 0.7) for ``banded`` (ATLD+). It is part of
the deployed predictor and is attacked end to end (the step is computed with autograd inside
the forward, with ``create_graph``); the ``bpda`` predictor treats the step as the identity in
the backward pass. Because the step is a sign, its own derivative is zero almost everywhere, so
the two differ only where the [0, 1] clip is active.

What to expect: cheap training (one attack step) with high PGD numbers that overstate
robustness — the authors' own supplement shows ATLD without IMT falling from 66% (PGD-20) to
35% under AutoAttack on CIFAR-10 — so judge it by the margin-loss and gradient-free attacks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional
from torch import nn

from trainables.base import EPS, BaseConfig, Defense, Predictor, sgd_step
from trainables.common import eval_mode, pgd_step_size, smooth_ce
from trainables.nets import make_classifier
from trainables.spec import DataSpec

LATENTS = ("logits", "features")
IMT_MODES = ("off", "uniform", "banded")
BAND = (0.3, 0.7)  # D's natural probability where the banded IMT step is halved


@dataclass(frozen=True)
class Config(BaseConfig):
    latent: str = "logits"  # what D sees: the classifier's logits or its penultimate features
    d_hidden: int = 256  # width of the discriminator MLP's hidden layers
    d_steps: int = 2  # discriminator SGD steps per batch
    d_lr: float = 1e-3  # discriminator SGD learning rate (momentum as the classifier's), constant
    gamma: float = 0.5  # weight of the balanced latent MSE term
    balance_max: float = 100.0  # cap on the adaptive balance s (ratio of input-gradient maxima)
    # decay of a running average of s (0: this batch's s, as in the reference; an average lags
    # behind a fast-growing MSE term and lets it blow up)
    balance_ema: float = 0.0
    label_smoothing: float = 0.5  # probability mass moved off the true class in the CE target
    attack_steps: int = 1  # signed steps after the random start (size ε for one, 2.5·ε/k for k > 1)
    imt: str = "off"  # test-time step toward "D says natural": off | uniform | banded (ATLD+)
    imt_step: float = field(default=8 / 255, metadata=EPS)  # IMT L∞ step on [0, 1] pixels


class LatentDiscriminator(nn.Module):
    """MLP on a latent vector with two heads: natural-vs-adversarial (one logit, natural = 1)
    and a K-way class head. ``forward`` returns (adv_logit [B], class_logits [B, K]).
    The input is standardized by batch normalization without affine parameters (latents of
    a young classifier are tiny and their scale drifts during training; the reference's WRN
    discriminator normalizes internally too); train it on natural and adversarial latents in
    one batch so the normalization cannot erase their difference.
    A buffer keeps the running adaptive balance s, so it is checkpointed with the network."""

    def __init__(self, in_dim: int, classes: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm1d(in_dim, affine=False),
                                  nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, hidden), nn.LeakyReLU(0.2))
        self.nat = nn.Linear(hidden, 1)
        self.cls = nn.Linear(hidden, classes)
        self.register_buffer("balance", torch.zeros(()))  # 0: not yet measured

    def forward(self, z: torch.Tensor):
        h = self.body(z.flatten(1).float())
        return self.nat(h).squeeze(1), self.cls(h)


def latent_of(f: nn.Module, x: torch.Tensor, latent: str) -> torch.Tensor:
    return f(x) if latent == "logits" else f.features(x)


def bce_nat_adv(d_nat: torch.Tensor | None, d_adv: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """D's natural-vs-adversarial BCE on its logits: natural -> 1, perturbed -> 0."""
    loss = functional.binary_cross_entropy_with_logits(d_adv, torch.zeros_like(d_adv), reduction=reduction)
    if d_nat is not None:
        loss = loss + functional.binary_cross_entropy_with_logits(d_nat, torch.ones_like(d_nat), reduction=reduction)
    return loss


def latent_step_size(eps: float, steps: int) -> float:
    """The latent attack's signed step: ε for one step, 2.5·ε/k for k > 1."""
    return eps if steps <= 1 else pgd_step_size(eps, steps)


def latent_attack(f: nn.Module, d: LatentDiscriminator, x: torch.Tensor, eps: float, steps: int,
                  latent: str = "logits") -> torch.Tensor:
    """Unsupervised latent attack: random start in the ε-ball, then ``steps`` signed steps
    lowering D's BCE on the perturbed latent (labelled 0), of size ε for one step (the
    reference's) and 2.5·ε/k for k > 1 (k steps of ε would only bounce between the ball's
    faces). ``f`` and ``d`` are used as given (callers set eval mode); only input gradients are
    taken, so no parameter's gradient is touched. Returns a detached batch in the ε-ball and [0, 1]."""
    x = x.detach()
    alpha = latent_step_size(eps, steps)
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        d_adv, _ = d(latent_of(f, x_adv, latent))
        # summed: each example's step follows its own gradient; the natural term is constant in x_adv
        grad = torch.autograd.grad(bce_nat_adv(None, d_adv, "sum"), x_adv)[0]
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv - alpha * grad.sign(), x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


class IMTPredictor(nn.Module):
    """f(x'), x' = clip(x − a·sign(∇ₓ BCE(D(latent(x)), natural)), 0, 1): one test-time step toward
    "D says natural", a halved where D's natural probability is in (0.3, 0.7) (``banded``).

    The step is computed inside the forward with autograd (grad mode is switched on even under
    ``no_grad``); with ``bpda`` the step is treated as the identity in the backward pass,
    otherwise its graph is kept (``create_graph``) so attacks differentiate through it."""

    def __init__(self, classifier: nn.Module, discriminator: LatentDiscriminator, *, mode: str,
                 step: float, latent: str, bpda: bool = False):
        super().__init__()
        if mode not in ("uniform", "banded"):
            raise ValueError(f"IMT mode must be uniform or banded, got {mode!r}")
        self.classifier, self.discriminator = classifier, discriminator
        self.mode, self.step, self.latent, self.bpda = mode, step, latent, bpda

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        outer = torch.is_grad_enabled()
        through = outer and x.requires_grad and not self.bpda
        with torch.enable_grad():
            xi = x if through else x.detach().requires_grad_(True)
            d_nat, _ = self.discriminator(latent_of(self.classifier, xi, self.latent))
            loss = functional.binary_cross_entropy_with_logits(d_nat, torch.ones_like(d_nat), reduction="sum")
            grad = torch.autograd.grad(loss, xi, create_graph=through)[0]
        with torch.set_grad_enabled(outer):
            size = torch.full_like(d_nat, self.step)
            if self.mode == "banded":
                p = torch.sigmoid(d_nat.detach())
                size = torch.where((p > BAND[0]) & (p < BAND[1]), size / 2, size)
            x_new = (x - size.view(-1, *[1] * (x.dim() - 1)) * grad.sign()).clamp(0.0, 1.0)
            if self.bpda:
                x_new = x + (x_new - x).detach()
        return x_new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(x))


class ATLD(Defense):
    name = "atld"
    Config = Config
    summary = "Qian et al.: latent-discriminator attack + balanced latent MSE, optional IMT"

    def build(self, cfg, spec: DataSpec):
        if cfg.latent not in LATENTS:
            raise ValueError(f"latent must be one of {LATENTS}, got {cfg.latent!r}")
        if cfg.imt not in IMT_MODES:
            raise ValueError(f"imt must be one of {IMT_MODES}, got {cfg.imt!r}")
        f = make_classifier(cfg.arch, spec)
        if cfg.latent == "logits":
            dim = spec.classes
        else:
            dim = f.head.in_features
        return {"classifier": f, "discriminator": LatentDiscriminator(dim, spec.classes, cfg.d_hidden)}

    def trainable(self, cfg):
        return ("classifier", "discriminator")

    def optimizers(self, nets, cfg, total_steps):
        opts, scheds = super().optimizers(nets, cfg, total_steps)
        opts["discriminator"] = torch.optim.SGD(nets["discriminator"].parameters(), lr=cfg.d_lr,
                                                momentum=cfg.momentum)
        return opts, scheds

    def attack(self, ctx, x) -> torch.Tensor:
        cfg, f, d = ctx.cfg, ctx.raw["classifier"], ctx.raw["discriminator"]
        with eval_mode(f, d), ctx.autocast():
            return latent_attack(f, d, x, cfg.eps_train, cfg.attack_steps, cfg.latent)

    def classifier_step(self, ctx, x, x_adv, y):
        """One classifier update; returns its loss terms and the (detached) natural and
        adversarial latents for the discriminator."""
        cfg, f = ctx.cfg, ctx.raw["classifier"]
        x_adv = x_adv.detach().requires_grad_(True)
        n = x.shape[0]
        with ctx.autocast():
            # the target f(x): a training-mode pass of its own (the natural batch's statistics),
            # held fixed, on the bare module (a second forward of the DDP wrapper before the
            # backward fails). Sharing one pass over [x, x_adv] let the MSE's gradient move the
            # shared batch statistics that also make the target, which a held-fixed target does
            # not see: at the defaults on digits that loop blew the logits up within three epochs
            with torch.no_grad():
                nat_logits = f(x)
            adv_logits = ctx.nets["classifier"](x_adv)
            ce = smooth_ce(adv_logits, y, cfg.label_smoothing)
            mse = functional.mse_loss(adv_logits, nat_logits)
        s = self._balance(ctx, ce, mse, x_adv)
        loss = ce + cfg.gamma * s * mse
        sgd_step(ctx.opts["classifier"], loss, ctx.scheds.get("classifier"))
        # D learns from the eval-mode view, the one the attack and IMT query
        with torch.no_grad(), eval_mode(f):
            z_nat, z_adv = latent_of(f, torch.cat([x, x_adv]), cfg.latent).split(n)
        terms = {"loss": loss.item(), "ce": ce.item(), "mse": mse.item(), "balance": s}
        return terms, z_nat.detach(), z_adv.detach()

    def _balance(self, ctx, ce, mse, x_adv) -> float:
        """s = max|∇ₓCE| / max|∇ₓMSE| on this batch, capped and averaged over steps."""
        cfg, d = ctx.cfg, ctx.raw["discriminator"]
        g_ce, g_mse = (torch.autograd.grad(t, x_adv, retain_graph=True)[0].abs().max() for t in (ce, mse))
        s = (g_ce / g_mse.clamp_min(1e-12)).clamp(max=cfg.balance_max).item()
        prev = d.balance.item()
        if prev > 0 and cfg.balance_ema > 0:
            s = cfg.balance_ema * prev + (1 - cfg.balance_ema) * s
        d.balance.fill_(s)
        return s

    def discriminator_step(self, ctx, z_nat, z_adv, y) -> dict[str, float]:
        cfg, d = ctx.cfg, ctx.nets["discriminator"]
        n = z_nat.shape[0]
        for _ in range(cfg.d_steps):
            dl, cl = d(torch.cat([z_nat, z_adv]))  # one batch: shared input statistics
            dn, da, cn, ca = dl[:n], dl[n:], cl[:n], cl[n:]
            bce = bce_nat_adv(dn, da)
            cls = functional.cross_entropy(cn, y) + functional.cross_entropy(ca, y)
            sgd_step(ctx.opts["discriminator"], bce + cls, ctx.scheds.get("discriminator"))
        with torch.no_grad():
            acc = ((dn > 0).float().mean() + (da < 0).float().mean()) / 2
        return {"d_bce": bce.item(), "d_cls": cls.item(), "d_acc": acc.item()}

    def train_step(self, ctx, x, y):
        x_adv = self.attack(ctx, x)
        terms, z_nat, z_adv = self.classifier_step(ctx, x, x_adv, y)
        return {**terms, **self.discriminator_step(ctx, z_nat, z_adv, y)}

    def predictor(self, nets, cfg):
        f = nets["classifier"]
        if cfg.imt == "off":
            return Predictor(f)
        kw = dict(mode=cfg.imt, step=cfg.imt_step, latent=cfg.latent)
        d = nets["discriminator"]
        return Predictor(IMTPredictor(f, d, **kw), bpda=IMTPredictor(f, d, bpda=True, **kw))
