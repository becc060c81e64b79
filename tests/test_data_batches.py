"""Drawing images from a split (raysearch.data.batches): the fixed evaluation subset, shuffled
batches and the crop / flip augmentation."""
import torch

from raysearch import data


def test_augment_keeps_shape_and_range():
    x = torch.rand(16, 3, 32, 32)
    out = data.augment_batch(x, flip=True)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_eval_subset_is_fixed_by_its_seed(digits):
    x, y = data.eval_subset(digits.val, 50, seed=3)
    again_x, again_y = data.eval_subset(digits.val, 50, seed=3)
    assert torch.equal(x, again_x) and torch.equal(y, again_y) and x.dtype == torch.float32
    assert len(data.eval_subset(digits.val, 10 ** 6)[1]) == len(digits.val)


def test_shuffled_batches_cover_the_split_once():
    split = data.Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).clone(),
                       torch.arange(10))
    labels = torch.cat([y for _, y in data.shuffled_batches(split, 3)])
    assert sorted(labels.tolist()) == list(range(10))
