"""A trained predictor as one self-contained TorchScript module: [0, 1] images N×C×H×W float32
-> logits N×K, loadable with ``torch.jit.load`` alone.

Plain classifiers (standard, pgd_at, trades, ijsat, rvs, and atld without IMT) are scripted,
or traced where a user's architecture cannot be scripted. The two pipelines that neither
scripting nor tracing takes as they are get a scriptable twin here that computes the same
function from the same networks, checked against the original on every export (``verify``):

* atop's ``Purified`` (f∘g∘t with a fresh random transform t per call): its mask geometry is
  plain Python on the image size, which tracing turns into tensors. Fixed per data set, it is
  computed here once; the random draws (``randn_like``, ``rand``) stay ops of the module, in
  the same order, so every call of the exported module draws afresh (and the same seed gives
  the same draws as the project's predictor).
* atld's ``IMTPredictor`` (a test-time step computed with ``torch.autograd.grad`` inside the
  forward): TorchScript has ``autograd.grad`` and ``set_grad_enabled`` but not the
  ``enable_grad`` context; the twin switches grad mode on for the step and restores it, and
  keeps the step's graph when the caller differentiates (attacks see through it, as in the
  project).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from trainables.atld import BAND, IMTPredictor
from trainables.atop import Purified, block_px
from trainables.base import Predictor


class ExportError(Exception):
    """A predictor that cannot be exported, or an export that does not match; one line why."""


@dataclass
class Exported:
    module: torch.jit.ScriptModule
    how: str  # "script", "trace" or "script (<twin>)": how the module was made
    forward_passes: int  # network passes per call (RobustBench's number_forward_passes)
    note: str = ""  # what a user must know about calling it (randomness, gradients inside)


class PurifiedTwin(nn.Module):
    """``trainables.atop.Purified`` (not the BPDA variant) for ``size``×``size`` images: the
    random transform's noise, then ``k`` of ``grid``×``grid`` blocks of ``side`` px erased,
    purified and classified, logits averaged over ``n_masks`` draws."""

    def __init__(self, purified: Purified, size: int, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.purifier, self.classifier = purifier, classifier
        self.sigma = float(purified.sigma)
        self.n_masks = int(purified.n_masks)
        self.size = size
        self.side = block_px(purified.block, size)
        self.grid = math.ceil(size / self.side)
        cells = self.grid * self.grid
        self.k = min(cells, round(purified.missing_rate * cells))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.size(2) != self.size or x.size(3) != self.size:
            raise ValueError("expected N×C×H×W images of the exported size")
        reps = x.repeat(self.n_masks, 1, 1, 1)
        n = reps.size(0)
        noisy = reps
        if self.sigma > 0:
            noisy = (reps + self.sigma * torch.randn_like(reps)).clamp(0, 1)
        cells = self.grid * self.grid
        erased = torch.zeros(n, cells, device=x.device, dtype=x.dtype)
        if self.k > 0:
            idx = torch.rand(n, cells, device=x.device).topk(self.k, dim=1).indices
            erased.scatter_(1, idx, 1.0)
        mask = erased.view(n, 1, self.grid, self.grid).repeat_interleave(self.side, 2)
        mask = mask.repeat_interleave(self.side, 3)[:, :, :self.size, :self.size]
        purified = self.purifier(noisy * (1 - mask), mask)
        logits = self.classifier(purified)
        return logits.view(self.n_masks, x.size(0), -1).mean(0)


class IMTTwin(nn.Module):
    """``trainables.atld.IMTPredictor`` (not the BPDA variant): one signed step of size
    ``step`` toward "D says natural" (halved where D's natural probability lies in the band,
    ``banded``), then the classifier."""

    def __init__(self, imt: IMTPredictor, classifier: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.classifier, self.discriminator = classifier, discriminator
        self.step = float(imt.step)
        self.banded = imt.mode == "banded"
        self.features = imt.latent == "features"
        self.band_low, self.band_high = float(BAND[0]), float(BAND[1])

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        if self.features:
            return self.classifier.features(x)
        return self.classifier(x)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        outer = torch.is_grad_enabled()
        through = outer and x.requires_grad
        torch.set_grad_enabled(True)
        xi = x if through else x.detach().requires_grad_(True)
        d_nat, _ = self.discriminator(self.latent(xi))
        loss = nn.functional.binary_cross_entropy_with_logits(d_nat, torch.ones_like(d_nat), reduction="sum")
        grad = torch.autograd.grad([loss], [xi], create_graph=through)[0]
        torch.set_grad_enabled(outer)
        assert grad is not None
        size = torch.full_like(d_nat, self.step)
        if self.banded:
            p = torch.sigmoid(d_nat.detach())
            size = torch.where((p > self.band_low) & (p < self.band_high), size / 2, size)
        return (x - size.view(-1, 1, 1, 1) * grad.sign()).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(x))



@contextlib.contextmanager
def quiet_jit():
    """TorchScript's deprecation notices (torch ≥ 2.9 points to torch.export, which cannot hold
    atld's in-forward gradient) not printed while exporting."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def compile_module(module: nn.Module, inputs: dict[str, tuple], name: str,
                   check: bool = True) -> torch.jit.ScriptModule:
    """``module`` scripted, else traced on ``inputs`` (method name -> example arguments; all of
    them traced, e.g. ``features`` beside ``forward``). ``check``: let tracing re-run and compare
    (off for random modules, whose runs differ by design)."""
    try:
        return torch.jit.script(module)
    except Exception as scripting:  # TorchScript's compiler raises many types; tracing is the fallback
        reason = _first_line(scripting)
    try:
        return torch.jit.trace_module(module, inputs, check_trace=check)
    except Exception as tracing:  # as above: whatever tracing raises, the export says why, in one line
        raise ExportError(f"cannot export the {name} ({type(module).__name__}): TorchScript cannot compile it "
                          f"({reason}) and tracing failed ({_first_line(tracing)})") from None


def how_made(module: torch.jit.ScriptModule) -> str:
    return "trace" if isinstance(module, torch.jit.TopLevelTracedModule) else "script"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def export_predictor(predictor: Predictor, channels: int, size: int) -> Exported:
    """The predictor's deployed model as a TorchScript module, in eval mode. The networks are
    expected on the CPU in eval mode, as ``raysearch.trial_io.rebuild(..., device="cpu")``
    leaves them."""
    model = predictor.model
    image = torch.rand(2, channels, size, size)
    with quiet_jit():
        if isinstance(model, Purified):
            return _purified(model, image)
        if isinstance(model, IMTPredictor):
            return _imt(model, image)
        module = compile_module(model, {"forward": (image,)}, "predictor", check=not predictor.randomized)
        note = "randomized: two calls on the same images differ" if predictor.randomized else ""
        return Exported(module.eval(), how_made(module), 1, note)


def _purified(model: Purified, image: torch.Tensor) -> Exported:
    size = image.shape[-1]
    purifier = compile_module(model.purifier, {"forward": (image, image[:, :1])}, "purifier")
    classifier = compile_module(model.classifier, {"forward": (image,)}, "classifier")
    twin = torch.jit.script(PurifiedTwin(model, size, purifier, classifier))
    note = (f"randomized: every call draws a fresh transform (Gaussian noise of std {model.sigma:g}, then "
            f"{twin.k} of {twin.grid}×{twin.grid} blocks of {twin.side} px erased) before the purifier and the "
            f"classifier, and averages the logits of {model.n_masks} draw(s); two calls on the same images differ")
    parts = f"purifier: {how_made(purifier)}, classifier: {how_made(classifier)}"
    return Exported(twin.eval(), f"script (twin of trainables.atop.Purified; {parts})", model.n_masks, note)


def _imt(model: IMTPredictor, image: torch.Tensor) -> Exported:
    features = model.latent == "features"
    methods = ("forward", "features") if features else ("forward",)
    classifier = compile_module(model.classifier, {m: (image,) for m in methods}, "classifier")
    with torch.no_grad():
        latent = model.classifier.features(image) if features else model.classifier(image)
    discriminator = compile_module(model.discriminator, {"forward": (latent,)}, "discriminator")
    twin = torch.jit.script(IMTTwin(model, classifier, discriminator))
    note = ("test-time step inside the forward: every call takes an input gradient of the latent discriminator "
            "(with autograd, also under torch.no_grad(), not under torch.inference_mode()) and moves the images "
            "one signed step before classifying them; differentiating the output differentiates through the step")
    parts = f"classifier: {how_made(classifier)}, discriminator: {how_made(discriminator)}"
    return Exported(twin.eval(), f"script (twin of trainables.atld.IMTPredictor; {parts})", 2, note)


def verify(exported: Exported, predictor: Predictor, channels: int, size: int, seed: int = 0) -> float:
    """The largest logit difference between the exported module and the project's predictor on
    a random batch (another batch size than the examples, so a size fixed by tracing shows),
    both run from the same random seed; a randomized module must also differ between two
    calls. Raises ExportError where they do not agree."""
    x = torch.rand(3, channels, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        got = exported.module(x)
        torch.manual_seed(seed)
        want = predictor.model(x)
        again = exported.module(x)
    if got.shape != want.shape:
        raise ExportError(f"the exported module returns shape {tuple(got.shape)}, the predictor {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    if not diff <= 1e-4 * max(1.0, float(want.abs().max())):
        raise ExportError(f"the exported module's logits differ from the predictor's by up to {diff:.3g}")
    if predictor.randomized and torch.equal(got, again):
        raise ExportError("the exported module lost the predictor's randomness: two calls gave the same logits")
    return diff
