"""The shared inference loop returns what a plain forward pass returns, row for row, whatever the batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcli.inference import infer, row_batches, store_pixels
from medcli.models import create_model
from medcli.training.batches import index_loader, to_model_input


class _Doubler(torch.nn.Module):
    """Records the batches it sees; output depends on the row only, so any mix-up of rows shows."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.batch_sizes.append(len(x))
        return self.linear(x.flatten(1)) * 2


def test_outputs_equal_a_plain_forward_pass_in_position_order_with_a_ragged_last_batch():
    torch.manual_seed(0)
    model = _Doubler()
    data = torch.randn(10, 4)
    expected = model(data).detach()
    model.batch_sizes.clear()
    out = infer(model, row_batches(np.arange(10), 3), lambda pos: data[pos], 10)
    assert model.batch_sizes == [3, 3, 3, 1]  # 3 does not divide 10
    assert out.dtype == torch.float32 and out.shape == (10, 3)
    assert torch.equal(out, expected)
    assert not model.training  # inference is eval mode


def test_positions_in_any_order_come_back_sorted():
    torch.manual_seed(0)
    model = _Doubler()
    data = torch.randn(7, 4)
    batches = [torch.tensor([5, 1]), torch.tensor([6, 0, 3]), torch.tensor([2, 4])]
    out = infer(model, batches, lambda pos: data[pos], 7)
    assert torch.allclose(out, model(data).detach())
    assert torch.equal(out[5], infer(model, [torch.tensor([0])], lambda pos: data[5:6], 1)[0])  # row 5 is image 5's output


def test_missing_or_extra_positions_are_an_error_not_garbage():
    model = _Doubler()
    data = torch.randn(5, 4)
    with pytest.raises(ValueError, match="covered 4 positions, expected 5"):
        infer(model, [torch.tensor([0, 1]), torch.tensor([2, 3])], lambda pos: data[pos], 5)


def test_empty_input_gives_an_empty_result():
    assert infer(_Doubler(), [], lambda pos: pos, 0).shape == (0, 0)


def test_tta_is_the_log_of_the_mean_of_flipped_and_unflipped_softmax():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    images = torch.randn(5, 1, 8, 8)
    model(images)  # materialise the lazy layer
    out = infer(model, row_batches(np.arange(5), 2), lambda pos: images[pos], 5, tta=True)
    with torch.no_grad():
        p = (torch.softmax(model(images), 1) + torch.softmax(model(torch.flip(images, dims=[3])), 1)) / 2
    assert torch.allclose(out, torch.log(p), atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-6)
    plain = infer(model, row_batches(np.arange(5), 2), lambda pos: images[pos], 5)
    assert not torch.allclose(out, torch.log_softmax(plain, 1), atol=1e-4)  # the flipped image counts


def test_row_batches_group_by_position_and_read_rows_front_to_back():
    rows = np.array([9, 2, 7, 1, 8, 0, 5])
    batches = [b.tolist() for b in row_batches(rows, 3)]
    assert [sorted(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]  # membership by position only
    assert all(list(rows[b]) == sorted(rows[b]) for b in batches)  # each batch reads its rows in ascending order
    with pytest.raises(ValueError):
        next(row_batches(rows, 0))


def test_store_pixels_is_channels_first_uint8():
    images = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1)
    px = store_pixels(images, np.array([1, 0]), "cpu")
    assert px.dtype == torch.uint8 and px.shape == (2, 1, 3, 4)
    assert torch.equal(px[0, 0], torch.from_numpy(images[1, :, :, 0]))


def test_training_predict_and_feature_extraction_match_the_model():
    from accelerate import Accelerator

    from medcli.training.features import extract_features
    from medcli.training.loop import image_inputs, predict

    class _Images:  # the part of ImageSet that image_inputs reads
        def __init__(self, images):
            self.images = images

        def pixels(self, idx):
            return torch.from_numpy(np.ascontiguousarray(self.images[idx.numpy()])).permute(0, 3, 1, 2)

    torch.manual_seed(0)
    model = create_model("customcnn", 3, in_channels=1).eval()
    images = np.random.default_rng(0).integers(0, 256, (11, 16, 16, 1), dtype=np.uint8)
    norm = (torch.tensor([0.5]), torch.tensor([0.25]))
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2), *norm)
        logits, feats = model(x), model.trunk(x)
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare_data_loader(index_loader(11, 4, seed=0, shuffle=False, drop_last=False))
    got = predict(model, loader, image_inputs(_Images(images), norm, "cpu"), accelerator)
    assert got.shape == (11, 3) and np.allclose(got, logits.numpy(), atol=1e-5)
    model.train()
    rows = np.arange(11)
    got_feats = extract_features(model, images, rows, norm, accelerator, batch_size=4, progress=False)
    assert model.trunk.training  # the trunk's mode is given back
    assert got_feats.shape == (11, model.feature_dim) and torch.allclose(got_feats, feats, atol=1e-5)
    assert extract_features(model, images, rows[:0], norm, accelerator, batch_size=4, progress=False).shape == (0, model.feature_dim)
