"""The data package's entry points (raysearch.data): ``load`` with its fixed splits and
``describe``, the one place a data set's spec is looked up by name."""
import dataclasses

import pytest
import torch

from raysearch import data


def test_digits_splits_are_disjoint_and_fixed(digits):
    again = data.load("digits")
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1257, 180, 360)
    assert torch.equal(digits.val.x, again.val.x) and torch.equal(digits.test.y, again.test.y)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797  # every image in exactly one split
    assert digits.train.images().min() >= 0 and digits.train.images().max() == 1


def test_describe_gives_the_spec_load_gives(digits):
    assert data.describe("digits") == digits.spec == data.SPECS["digits"]
    assert data.DATASETS == ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist")


def test_a_builtin_spec_does_not_move_with_the_radius():
    """--eps-eval on a built-in data set changes the evaluation radius only (the caller applies it);
    its spec, and so the budgets scaled by eps_scale, stay the data set's."""
    assert data.describe("cifar10", eps_eval=0.1) == data.describe("cifar10")
    assert data.describe("digits", "/nowhere") == data.SPECS["digits"]  # a spec reads no files


def test_every_builtin_spec_is_consistent():
    for name, spec in data.SPECS.items():
        assert spec.name == name and len(spec.mean) == len(spec.std) == spec.channels
        assert spec.eps_scale == pytest.approx(spec.eps_eval / data.CIFAR_EPS)
        assert name in data.VAL_SIZE


def test_the_spec_is_recordable():
    """experiment.json records the spec as plain JSON values."""
    recorded = dataclasses.asdict(data.describe("mnist"))
    assert recorded["channels"] == 1 and recorded["mean"] == (0.1307,) and recorded["eps_eval_l2"] == 2.0


def test_unknown_names_are_one_line():
    with pytest.raises(data.DataError, match="known: digits, .*npz:PATH"):
        data.describe("imagenet")
    with pytest.raises(data.DataError, match="unknown kind"):
        data.load("csv:/tmp/x.csv")
