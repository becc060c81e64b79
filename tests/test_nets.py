"""The classifier architectures: images to logits through ``features`` and ``head``, the
automatic choice per data set, and the wide ResNets' published sizes."""
import pytest
import torch

from raysearch.data import SPECS
from trainables.nets import ARCHS, make_classifier


@pytest.mark.parametrize("arch", list(ARCHS))
def test_architectures_map_images_to_logits_and_features(arch):
    spec = SPECS["cifar100"] if arch != "small_cnn" else SPECS["digits"]
    net = make_classifier(arch, spec).eval()
    x = torch.rand(2, spec.channels, spec.size, spec.size)
    with torch.no_grad():
        logits, feats = net(x), net.features(x)
    assert logits.shape == (2, spec.classes)
    assert feats.shape == (2, net.head.in_features)
    assert torch.allclose(net.head(feats), logits, atol=1e-5)


def test_auto_picks_small_cnn_for_digits_and_preact18_for_cifar():
    assert type(make_classifier("auto", SPECS["digits"])).__name__ == "SmallCNN"
    assert type(make_classifier("auto", SPECS["cifar10"])).__name__ == "PreActResNet18"


def parameter_count(arch: str) -> int:
    return sum(p.numel() for p in make_classifier(arch, SPECS["cifar10"]).parameters())


def test_wrn_sizes():
    assert 36e6 < parameter_count("wrn28_10") < 37e6 and 46e6 < parameter_count("wrn34_10") < 47e6
