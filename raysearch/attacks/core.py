"""Shared pieces of every attack: forward passes with EOT, per-example losses, predictions.

A randomized predictor is called ``eot`` times per step; the copies are stacked into one batch
(up to ``max_batch`` images per forward pass) so that the draws cost one large forward pass
instead of many small ones. Losses are computed per draw and averaged, so their gradient is
the EOT gradient of Athalye et al. (2018): the mean over draws of each draw's gradient.
Predictions inside attacks average the softmax probabilities over the draws.

Scoring (``score_calls``, ``fraction_correct``, ``ensemble_correct``): a randomized predictor
is deployed as one call per input, so its accuracy on an image is the fraction of ``calls``
fresh calls that answer correctly (a deterministic predictor: 1 call, 0 or 1). The vote of
those calls (argmax of their averaged softmax) is an ensemble, reported apart as such.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch.nn import functional

MAX_BATCH = 4096  # images per forward pass when EOT copies are stacked
ALL = slice(None)  # index of every example: tensor[ALL] is a view, so no copy is made


def subset(act, mask: torch.Tensor):
    """Indices (into the full batch) of the examples of ``act`` (ALL or an index tensor) that
    ``mask`` (over ``act``) selects."""
    return mask if isinstance(act, slice) else act[mask]


def generator(x: torch.Tensor, seed: int) -> torch.Generator:
    """A private random stream on x's device, so attacks touch no global RNG state."""
    return torch.Generator(device=x.device).manual_seed(int(seed))


def uniform(g: torch.Generator, shape, x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=x.device, dtype=x.dtype) * (high - low) + low


def normal(g: torch.Generator, shape, x: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=g, device=x.device, dtype=x.dtype)


def draws(model: Callable, x: torch.Tensor, eot: int, max_batch: int = MAX_BATCH) -> torch.Tensor:
    """Logits of ``eot`` independent forward passes, shape (eot, N, classes)."""
    if eot <= 1:
        return model(x)[None]
    per = max(1, max_batch // max(len(x), 1))
    out = []
    for i in range(0, eot, per):
        k = min(per, eot - i)
        z = model(x.repeat(k, *([1] * (x.dim() - 1))))
        out.append(z.view(k, len(x), -1))
    return torch.cat(out)


def probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax averaged over the draw dimension: (eot, N, C) -> (N, C)."""
    return torch.softmax(logits.float(), -1).mean(0)


@torch.no_grad()
def predict(model: Callable, x: torch.Tensor, eot: int = 1, batch_size: int = 512) -> torch.Tensor:
    """Labels from probabilities averaged over ``eot`` draws."""
    out = [probs(draws(model, x[i:i + batch_size], eot)).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


class CallScores(NamedTuple):
    """Per image, from the same fresh calls: the fraction of calls that answered correctly
    (float32), and whether the ensemble vote of the calls is correct (bool)."""

    fraction: torch.Tensor
    ensemble: torch.Tensor


@torch.no_grad()
def score_calls(model: Callable, x: torch.Tensor, y: torch.Tensor, calls: int,
                batch_size: int = 512) -> CallScores:
    """Score ``calls`` fresh calls of ``model`` on each image (copies stacked into batches as in
    ``draws``). For one call both scores are the call's correctness, computed as ``predict`` does."""
    fraction, ensemble = [], []
    for i in range(0, len(x), batch_size):
        p = torch.softmax(draws(model, x[i:i + batch_size], calls).float(), -1)  # (calls, N, C)
        yb = y[i:i + batch_size]
        fraction.append((p.argmax(-1) == yb).float().mean(0))
        ensemble.append(p.mean(0).argmax(1) == yb)
    if not fraction:
        return CallScores(torch.zeros(0, device=x.device), torch.zeros(0, dtype=torch.bool, device=x.device))
    return CallScores(torch.cat(fraction), torch.cat(ensemble))


def fraction_correct(model: Callable, x: torch.Tensor, y: torch.Tensor, calls: int,
                     batch_size: int = 512) -> torch.Tensor:
    """Per image, the fraction of ``calls`` fresh calls that answer ``y`` (float32 in [0, 1])."""
    return score_calls(model, x, y, calls, batch_size).fraction


def ensemble_correct(model: Callable, x: torch.Tensor, y: torch.Tensor, calls: int,
                     batch_size: int = 512) -> torch.Tensor:
    """Per image, whether the vote of ``calls`` fresh calls (argmax of their averaged softmax)
    is ``y`` (bool): an ensemble of calls, not the deployed predictor."""
    return score_calls(model, x, y, calls, batch_size).ensemble


# Per-example losses on logits of shape (..., N, C); each returns (..., N). The attack maximizes.

def _true_and_other(z: torch.Tensor, y: torch.Tensor):
    yy = y.expand(z.shape[:-1])
    true = z.gather(-1, yy[..., None]).squeeze(-1)
    other = z.masked_fill(functional.one_hot(yy, z.shape[-1]).bool(), float("-inf")).amax(-1)
    return true, other


def ce_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = z.float()
    return functional.cross_entropy(z.reshape(-1, z.shape[-1]), y.expand(z.shape[:-1]).reshape(-1),
                           reduction="none").view(z.shape[:-1])


def margin_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin max_{j≠y} z_j − z_y (Carlini & Wagner 2017); positive once misclassified."""
    true, other = _true_and_other(z.float(), y)
    return other - true


def dlr_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020): −(z_y − max_{j≠y} z_j)/(z_π1 − z_π3),
    invariant to shifts and rescaling of the logits; needs at least 3 classes."""
    z = z.float()
    s = z.sort(-1, descending=True).values
    true, other = _true_and_other(z, y)
    return -(true - other) / (s[..., 0] - s[..., 2] + 1e-12)


def dlr_targeted_loss(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2); needs at least 4 classes."""
    z = z.float()
    s = z.sort(-1, descending=True).values
    true = z.gather(-1, y.expand(z.shape[:-1])[..., None]).squeeze(-1)
    tgt = z.gather(-1, target.expand(z.shape[:-1])[..., None]).squeeze(-1)
    return -(true - tgt) / (s[..., 0] - 0.5 * (s[..., 2] + s[..., 3]) + 1e-12)


LOSSES = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def scores(z: torch.Tensor) -> torch.Tensor:
    """(eot, N, C) logits -> (N, C) scores whose argmax is the prediction from averaged
    probabilities (the logits themselves for a single draw, saving a softmax)."""
    return z[0] if len(z) == 1 else probs(z)


def loss_grad(model: Callable, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, eot: int,
              max_batch: int = MAX_BATCH):
    """(per-example loss averaged over draws, its gradient w.r.t. x, ``scores`` of the draws)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = draws(model, x, eot, max_batch)
        loss = loss_fn(z, y).mean(0)
        grad, = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad, scores(z.detach())


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return (x + (x_adv - x).clamp_(-eps, eps)).clamp_(0, 1)


def l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    d = x_adv - x
    d = d * torch.clamp(eps / (l2_norm(d) + 1e-12), max=1.0)
    return (x + d).clamp(0, 1)


def param_pgd(model: Callable, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor,
              render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bound: float, steps: int,
              step_factor: float = 2.5, loss: str = "ce",
              penalty: Callable[[torch.Tensor], torch.Tensor] | None = None, eot: int = 1,
              early_stop: bool | None = None):
    """Signed-gradient ascent on a per-image parameter tensor ``theta`` (a flow field, colour
    map or DCT perturbation) kept in [−bound, bound], maximizing loss(render(x, theta)) minus
    an optional per-example ``penalty(theta)``. Returns the first image that fools the model,
    else the last iterate; for a randomized model (``eot`` > 1) the image of highest EOT loss.
    ``early_stop`` (default: when ``eot`` is 1) stops attacking an
    image once it is fooled."""
    loss_fn = LOSSES[loss]
    early_stop = eot <= 1 if early_stop is None else early_stop
    alpha = step_factor * bound / max(steps, 1)
    theta = theta.detach().clone()
    found = render(x, theta).detach()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    max_loss = eot > 1  # randomized model: keep the highest-loss image, not a marginal first hit
    top_loss = torch.full((len(x),), -torch.inf, device=x.device)
    act = ALL
    for _ in range(steps):
        if early_stop and fooled.any():
            act = (~fooled).nonzero().squeeze(1)
            if not len(act):
                break
        th = theta[act].detach().requires_grad_(True)
        with torch.enable_grad():
            x_adv = render(x[act], th)
            z = draws(model, x_adv, eot)
            adv_loss = loss_fn(z, y[act]).mean(0)
            obj = adv_loss if penalty is None else adv_loss - penalty(th)
            grad, = torch.autograd.grad(obj.sum(), th)
        with torch.no_grad():
            if max_loss:
                up = adv_loss.detach() > top_loss[act]
                found[subset(act, up)], top_loss[subset(act, up)] = x_adv.detach()[up], adv_loss.detach()[up]
            else:
                wrong = (scores(z.detach()).argmax(1) != y[act]) & ~fooled[act]
                hit = subset(act, wrong)
                found[hit] = x_adv.detach()[wrong]
                fooled[hit] = True
            theta[act] = (th.detach() + alpha * grad.sign()).clamp(-bound, bound)
    with torch.no_grad():
        if max_loss:
            x_last = render(x, theta)
            up = loss_fn(draws(model, x_last, eot), y).mean(0) > top_loss
            found[up] = x_last[up]
            return found
        rest = (~fooled).nonzero().squeeze(1)
        if len(rest):
            found[rest] = render(x[rest], theta[rest])
    return found


class MeanOfDraws(torch.nn.Module):
    """A randomized model seen through the mean of ``eot`` draws' logits: lets attacks that know
    nothing of EOT (a defense's own attacks) use the expectation over the randomness."""

    def __init__(self, model: Callable, eot: int):
        super().__init__()
        self.model, self.eot = model, eot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return draws(self.model, x, self.eot).mean(0)
