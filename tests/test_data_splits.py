"""Splits in memory (raysearch.data.splits): images on [0, 1] without changing the split, and the
fixed hold-out of the validation split."""
import pytest
import torch

from raysearch.data.splits import Split, hold_out


def test_images_are_on_0_1_and_leave_the_split_alone():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    split = Split(x, torch.arange(3))
    assert split.images().flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])
    floats = Split(x.float() / 255, torch.arange(3), 1.0)
    before = floats.x.clone()
    floats.images()[0] += 5
    assert torch.equal(floats.x, before)
    assert split.images(torch.tensor([2])).item() == 1.0


def test_hold_out_is_fixed_and_disjoint():
    split = Split(torch.zeros(20, 1, 2, 2, dtype=torch.uint8), torch.arange(20))
    rest, held = hold_out(split, 5)
    again_rest, again_held = hold_out(split, 5)
    assert torch.equal(held.y, again_held.y) and len(rest) == 15 and len(held) == 5
    assert sorted(rest.y.tolist() + held.y.tolist()) == list(range(20))
