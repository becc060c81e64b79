"""Shared pieces of every attack: forward passes with EOT, per-example losses, predictions.

A randomized predictor is called ``eot`` times per step; the copies are stacked into one batch
so that the draws cost one large forward pass instead of many small ones. Losses are computed
per draw and averaged, so their gradient is the EOT gradient of Athalye et al. (2018): the mean
over draws of each draw's gradient. Predictions inside attacks average the softmax
probabilities over the draws.

Memory: no forward pass takes more than ``max_batch`` image-calls (images × copies), whether
copies of a batch or slices of its images, and an EOT gradient backs each such piece up on its
own, so only one piece's graph is alive at a time. The limit is the ``max_batch`` argument, else
the one ``batch_limit`` sets for a block of code (``raysearch.attacks.memory`` plans it from the
predictor's measured cost and the memory budget), else ``MAX_BATCH``. Attacks themselves take no
such argument: callers set the limit around them.

Scoring (``score_calls``, ``fraction_correct``, ``ensemble_correct``): a randomized predictor
is deployed as one call per input, so its accuracy on an image is the fraction of ``calls``
fresh calls that answer correctly (a deterministic predictor: 1 call, 0 or 1). The vote of
those calls (argmax of their averaged softmax) is an ensemble, reported apart as such.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable, Iterator, NamedTuple

import torch
from torch.nn import functional

MAX_BATCH = 4096  # image-calls per forward pass when no limit is set (and the most a plan allows)
ALL = slice(None)  # index of every example: tensor[ALL] is a view, so no copy is made
_LIMIT: ContextVar[int] = ContextVar("max_batch", default=MAX_BATCH)


def max_batch() -> int:
    """Image-calls per forward pass in effect here (``batch_limit``'s, else MAX_BATCH)."""
    return _LIMIT.get()


@contextlib.contextmanager
def batch_limit(limit: int) -> Iterator[int]:
    """Every forward pass of core's functions inside the block takes at most ``limit``
    image-calls (images × stacked copies), unless a call passes its own ``max_batch``."""
    token = _LIMIT.set(max(1, int(limit)))
    try:
        yield _LIMIT.get()
    finally:
        _LIMIT.reset(token)


def pieces(n: int, copies: int, limit: int) -> list[list[tuple[slice, int]]]:
    """How ``copies`` stacked copies of ``n`` images split into forward passes of at most
    ``limit`` image-calls: blocks of copies, each a list of (image slice, copies in it). A batch
    that fits is copied as often as fits per pass; a larger one goes one copy at a time, in
    slices of ``limit`` images."""
    limit = max(1, limit)
    if n <= limit:
        per = max(1, limit // max(n, 1))
        return [[(ALL, min(per, copies - i))] for i in range(0, copies, per)]
    return [[(slice(i, min(i + limit, n)), 1) for i in range(0, n, limit)] for _ in range(copies)]


def _stacked(x: torch.Tensor, k: int) -> torch.Tensor:
    return x if k == 1 else x.repeat(k, *([1] * (x.dim() - 1)))


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


def draws(model: Callable, x: torch.Tensor, eot: int, max_batch: int | None = None) -> torch.Tensor:
    """Logits of ``eot`` independent forward passes, shape (eot, N, classes), in passes of at
    most ``max_batch`` image-calls (default: the limit in effect, ``max_batch()``)."""
    out = []
    for block in pieces(len(x), max(1, eot), max_batch or _LIMIT.get()):
        out.append(torch.cat([model(_stacked(x[sl], k)).unflatten(0, (k, len(x[sl]))) for sl, k in block], 1))
    return out[0] if len(out) == 1 else torch.cat(out)


def probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax averaged over the draw dimension: (eot, N, C) -> (N, C)."""
    return torch.softmax(logits.float(), -1).mean(0)


@torch.no_grad()
def predict(model: Callable, x: torch.Tensor, eot: int = 1, batch_size: int = 512,
            max_batch: int | None = None) -> torch.Tensor:
    """Labels from probabilities averaged over ``eot`` draws."""
    out = [probs(draws(model, x[i:i + batch_size], eot, max_batch)).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


class CallScores(NamedTuple):
    """Per image, from the same fresh calls: the fraction of calls that answered correctly
    (float32), and whether the ensemble vote of the calls is correct (bool)."""

    fraction: torch.Tensor
    ensemble: torch.Tensor


@torch.no_grad()
def score_calls(model: Callable, x: torch.Tensor, y: torch.Tensor, calls: int,
                batch_size: int = 512, max_batch: int | None = None) -> CallScores:
    """Score ``calls`` fresh calls of ``model`` on each image (copies stacked into batches as in
    ``draws``). For one call both scores are the call's correctness, computed as ``predict`` does."""
    fraction, ensemble = [], []
    for i in range(0, len(x), batch_size):
        p = torch.softmax(draws(model, x[i:i + batch_size], calls, max_batch).float(), -1)  # (calls, N, C)
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
              max_batch: int | None = None):
    """(per-example loss averaged over draws, its gradient w.r.t. x, ``scores`` of the draws).

    When the ``eot`` copies of the batch exceed ``max_batch`` image-calls (default: the limit in
    effect), each forward piece is backed up before the next runs, its gradients summed: the same
    gradient, with one piece's graph in memory at a time. ``loss_fn`` always sees logits of the
    whole batch (the other images' zero and without gradient), so per-image arguments bound to it
    (a target class per image) stay aligned."""
    x = x.detach()
    copies, n = max(1, eot), len(x)
    blocks = pieces(n, copies, max_batch or _LIMIT.get())
    if len(blocks) == 1 and len(blocks[0]) == 1:  # one forward pass: one graph
        x = x.requires_grad_(True)
        with torch.enable_grad():
            z = draws(model, x, eot, blocks[0][0][1] * n)
            loss = loss_fn(z, y).mean(0)
            grad, = torch.autograd.grad(loss.sum(), x)
        return loss.detach(), grad, scores(z.detach())
    grad = torch.zeros_like(x)
    logits, losses = [], []
    for block in blocks:
        zs, ls = [], []
        for sl, k in block:
            xi = x[sl].detach().requires_grad_(True)
            with torch.enable_grad():
                z = model(_stacked(xi, k)).unflatten(0, (k, len(xi)))
                whole = z if sl is ALL else _padded(z, sl, n)
                part = loss_fn(whole, y)[:, sl]
                g, = torch.autograd.grad(part.sum() / copies, xi)
            grad[sl] += g
            zs.append(z.detach())
            ls.append(part.detach())
        logits.append(torch.cat(zs, 1))
        losses.append(torch.cat(ls, 1))
    return torch.cat(losses).mean(0), grad, scores(torch.cat(logits))


def _padded(z: torch.Tensor, sl: slice, n: int) -> torch.Tensor:
    """(k, m, C) logits of the images ``sl`` placed among zero logits of all ``n`` images."""
    k, _, c = z.shape
    return torch.cat([z.new_zeros(k, sl.start, c), z, z.new_zeros(k, n - sl.stop, c)], 1)


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
        # the loss's gradient at the image (in planned pieces), then back through the rendering
        adv_loss, grad_x, p = loss_grad(model, x_adv, y[act], loss_fn, eot)
        with torch.enable_grad():
            obj = (x_adv * grad_x).sum() - (0 if penalty is None else penalty(th).sum())
            grad, = torch.autograd.grad(obj, th)
        x_adv = x_adv.detach()
        with torch.no_grad():
            if max_loss:
                up = adv_loss > top_loss[act]
                found[subset(act, up)], top_loss[subset(act, up)] = x_adv[up], adv_loss[up]
            else:
                wrong = (p.argmax(1) != y[act]) & ~fooled[act]
                hit = subset(act, wrong)
                found[hit] = x_adv[wrong]
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
    nothing of EOT (a defense's own attacks) use the expectation over the randomness. Its
    forward pieces respect the batch limit, but the attack backs the whole mean up at once, so
    every piece's graph is alive until then."""

    def __init__(self, model: Callable, eot: int):
        super().__init__()
        self.model, self.eot = model, eot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return draws(self.model, x, self.eot).mean(0)
