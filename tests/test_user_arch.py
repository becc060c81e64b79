"""Users' own classifiers (``--arch module:function`` and ``--arch file.py:function``): a good
factory trains through a defense and survives a checkpoint round trip; every way a factory can
be wrong is one ArchError line; rvs and atld demand the features/head pair. Factory modules are
written into a temporary folder."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from raysearch import trial_io
from tests.conftest import changed, fresh_context, params, run_cli
from trainables import REGISTRY
from trainables.nets import make_classifier
from trainables.user_arch import NEEDS_FEATURES, ArchError, canonical_arch, check_arch, load_factory

MODELS = '''
import torch
from torch import nn


class WithFeatures(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(spec.channels * spec.size ** 2, 16), nn.ReLU())
        self.head = nn.Linear(16, spec.classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


class SkipsHead(WithFeatures):
    def forward(self, x):
        return self.features(x)[:, :self.head.out_features] * 2.0


class ConvHead(WithFeatures):
    def __init__(self, spec):
        super().__init__(spec)
        self.head = nn.Sequential(nn.Linear(16, spec.classes))


class Image3DFeatures(WithFeatures):
    def features(self, x):
        return self.body(x).view(x.shape[0], 4, 4)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def with_features(spec):
    return WithFeatures(spec)


def plain(spec):
    return nn.Sequential(nn.Flatten(), nn.Linear(spec.channels * spec.size ** 2, spec.classes))


def raises(spec):
    raise ValueError("no model for " + spec.name + "\\nsecond line")


def not_module(spec):
    return 42


def bad_forward(spec):
    return nn.Sequential(nn.Conv2d(spec.channels + 5, 4, 3), nn.Flatten())


def wrong_shape(spec):
    return nn.Sequential(nn.Flatten(), nn.Linear(spec.channels * spec.size ** 2, spec.classes + 1))


def no_params(spec):
    return nn.Sequential(nn.Flatten(), nn.Identity())


def skips_head(spec):
    return SkipsHead(spec)


def conv_head(spec):
    return ConvHead(spec)


def image_features(spec):
    return Image3DFeatures(spec)


not_callable = 3
'''


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "ua_models.py").write_text(MODELS)
    (folder / "ua_broken.py").write_text("import torch\nraise RuntimeError('broken at import')\n")
    (folder / "ua_needs_dep.py").write_text("import ua_dependency_nobody_has\n")
    return folder


@pytest.fixture()
def on_path(models_dir, monkeypatch):
    """The factory modules importable by name, as from the folder a search is started in."""
    monkeypatch.syspath_prepend(str(models_dir))
    return models_dir


def one_step(method, spec, arch, x, y, **changes):
    defense = REGISTRY[method]
    ctx = fresh_context(defense, spec, arch=arch, **changes)
    before = params(ctx.raw["classifier"])
    terms = defense.train_step(ctx, x, y)
    return ctx, before, terms


@pytest.fixture(scope="module")
def batch(digits):
    return digits.train.images(torch.arange(32)), digits.train.y[:32]


# ---------------------------------------------------------------- a good factory

def test_a_module_factory_builds_through_make_classifier(on_path, digits):
    net = make_classifier("ua_models:with_features", digits.spec)
    assert type(net).__name__ == "WithFeatures"
    assert net(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    for method in ("pgd_at", *NEEDS_FEATURES):
        check_arch("ua_models:with_features", digits.spec, method)


@pytest.mark.parametrize("method", ["pgd_at", "rvs"])
def test_a_good_factory_trains_one_step_through_a_defense(on_path, digits, batch, method):
    ctx, before, terms = one_step(method, digits.spec, "ua_models:with_features", *batch)
    assert type(ctx.raw["classifier"]).__name__ == "WithFeatures"
    assert changed(before, ctx.raw["classifier"])
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())


def test_atld_on_features_sizes_its_discriminator_from_the_head(on_path, digits, batch):
    ctx, before, _ = one_step("atld", digits.spec, "ua_models:with_features", *batch, latent="features")
    assert ctx.raw["discriminator"].body[0].num_features == 16
    assert changed(before, ctx.raw["classifier"])


def test_a_relative_file_path_is_recorded_absolute_and_found_from_anywhere(models_dir, tmp_path, monkeypatch, digits):
    monkeypatch.chdir(models_dir)
    arch = canonical_arch("ua_models.py:plain")
    assert arch == f"{models_dir.resolve() / 'ua_models.py'}:plain"
    assert canonical_arch("ua_models:plain") == "ua_models:plain"
    assert canonical_arch("small_cnn") == "small_cnn"
    check_arch("./ua_models.py:plain", digits.spec, "pgd_at")
    monkeypatch.chdir(tmp_path)
    assert make_classifier(arch, digits.spec)(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert load_factory(arch) is load_factory(arch)  # the file is loaded once


def test_checkpoint_round_trip_rebuilds_the_user_model(models_dir, tmp_path, monkeypatch, digits, batch):
    arch = canonical_arch(str(models_dir / "ua_models.py") + ":with_features")
    ctx, _, _ = one_step("pgd_at", digits.spec, arch, *batch)
    net = ctx.raw["classifier"].eval()
    folder = tmp_path / "ckpt"
    trial_io.save(folder, nets=ctx.raw, opts=ctx.opts, scheds=ctx.scheds, epoch=0, method="pgd_at",
                  dataset="digits", cfg=ctx.cfg)
    assert json.loads((folder / trial_io.META).read_text())["config"]["arch"] == arch
    # as a later raysearch.evaluate in a fresh process, started elsewhere: the file is loaded again
    monkeypatch.chdir(tmp_path)
    for name in [n for n in sys.modules if n.startswith("_user_arch_ua_models_")]:
        monkeypatch.delitem(sys.modules, name)
    _, cfg, nets, predictor = trial_io.rebuild(folder, digits.spec)
    assert cfg.arch == arch and type(nets["classifier"]).__name__ == "WithFeatures"
    x = batch[0][:8]
    with torch.no_grad():
        assert torch.equal(predictor.model(x), net(x))


# ---------------------------------------------------------------- every failure is one line

FAILURES = [
    ("ua_missing_module_xyz:fn", "cannot import module 'ua_missing_module_xyz' (ModuleNotFoundError"),
    ("ua_broken:fn", "cannot import module 'ua_broken' (RuntimeError: broken at import)"),
    ("ua_needs_dep:fn", "No module named 'ua_dependency_nobody_has'"),
    ("ua_models:nope", "ua_models has no function 'nope'"),
    ("ua_models:not_callable", "ua_models.not_callable is not callable (int)"),
    ("ua_models:raises", "raises(spec) raised ValueError: no model for digits"),
    ("ua_models:not_module", "not_module(spec) returned int, not a torch.nn.Module"),
    ("ua_models:bad_forward", "forward on images of shape (2, 1, 8, 8) raised RuntimeError"),
    ("ua_models:wrong_shape", "gave shape (2, 11); expected (2, 10)"),
    ("ua_models:no_params", "no trainable parameters"),
    ("ua_models:", "expected module:function or path/to/file.py:function"),
    (":fn", "expected module:function or path/to/file.py:function"),
    ("/nowhere/ua_models.py:plain", "no file /nowhere/ua_models.py"),
]


@pytest.mark.parametrize("arch, needle", FAILURES)
def test_each_failure_is_one_arch_error_line(on_path, digits, arch, needle):
    with pytest.raises(ArchError) as info:
        check_arch(arch, digits.spec, "pgd_at")
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert message.startswith(f"--arch {arch}: ")
    assert isinstance(info.value, ValueError)


def test_a_file_that_fails_to_load_says_which_file(models_dir, digits):
    with pytest.raises(ArchError, match=r"cannot load file .*ua_broken.py \(RuntimeError: broken at import\)"):
        check_arch(f"{models_dir / 'ua_broken.py'}:fn", digits.spec, "pgd_at")


def test_the_worker_side_build_fails_with_the_same_error(on_path, digits):
    with pytest.raises(ArchError, match="returned int"):
        make_classifier("ua_models:not_module", digits.spec)


def test_built_in_names_are_left_to_the_registry(digits):
    check_arch("small_cnn", digits.spec, "rvs")
    check_arch("auto", digits.spec, "atld")


# ---------------------------------------------------------------- the features/head pair

@pytest.mark.parametrize("method", sorted(NEEDS_FEATURES))
@pytest.mark.parametrize("factory, problem", [
    ("plain", "the model has no features method"),
    ("skips_head", "forward never calls model.head"),
    ("conv_head", "model.head is a Sequential, not an nn.Linear"),
    ("image_features", "features(x) gave (2, 4, 4), not (2, D)"),
])
def test_feature_methods_refuse_a_model_without_features_and_head(on_path, digits, method, factory, problem):
    arch = f"ua_models:{factory}"
    check_arch(arch, digits.spec, "pgd_at")  # fine for a method that only needs logits
    with pytest.raises(ArchError) as info:
        check_arch(arch, digits.spec, method)
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert f"{method} needs features(x) -> (N, D) penultimate features and a head nn.Linear(D, classes)" in message
    assert NEEDS_FEATURES[method] in message


def test_checking_draws_no_more_than_building(on_path, digits):
    """The factory's initialization draws from the global stream; the check's images do not."""
    torch.manual_seed(3)
    make_classifier("ua_models:with_features", digits.spec)
    after_build = torch.rand(4)
    torch.manual_seed(3)
    check_arch("ua_models:with_features", digits.spec, "rvs")
    assert torch.equal(torch.rand(4), after_build)


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("arch, needle", [
    ("missing_mod:fn", "cannot import module 'missing_mod'"),
    ("{models}/ua_models.py:plain", "rvs needs features(x)"),
])
def test_the_cli_refuses_a_bad_arch_before_ray_in_one_line(models_dir, tmp_path, arch, needle):
    method = "rvs" if "plain" in arch else "pgd_at"
    proc = run_cli("--method", method, "--arch", arch.format(models=models_dir), "--storage-path", str(tmp_path),
                   timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr[-2000:]
    assert not any(tmp_path.iterdir())
