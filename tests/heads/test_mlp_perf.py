"""The MLP's training data path (issue #16, item 2): rows reach the first Linear standardised in
its matmul's dtype, bit-identical to what the model's own Standardize under autocast gives, and
the cached path still yields every training row once an epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashtagkit.heads.data import ArrayData
from hashtagkit.heads.mlp import BlockStream, Standardize, TrainInput, memory_epochs


def features(n=300, d=24, seed=0):
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(3, 2, (n, d)), 0).astype(np.float16)
    return X, rng.random(d).astype(np.float32) * 3, (rng.random(d) + 0.5).astype(np.float32)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_train_input_equals_standardize_under_autocast(precision):
    X, mean, std = features()
    layer = Standardize(X.shape[1])
    layer.mean.copy_(torch.from_numpy(mean))
    layer.std.copy_(torch.from_numpy(std))
    reference = layer(torch.from_numpy(X).float())  # what the model computes, in float32
    if precision == "bf16":
        reference = reference.to(torch.bfloat16)  # and what autocast hands the first Linear
    got = TrainInput(mean, std, precision)(X)
    assert got.dtype == reference.dtype
    assert torch.equal(got, reference)


def test_cached_epochs_hold_prepared_training_rows_once_each():
    X, mean, std = features(n=257)
    X[:, 0] = np.arange(len(X))  # column 0 names the row (exact in float16 up to 2,048)
    Y = np.zeros((len(X), 3), np.uint8)
    Y[:, 1] = np.arange(len(X)) % 2
    mask = np.ones(len(X), bool)
    mask[::5] = False
    prepare = TrainInput(np.zeros_like(mean), np.ones_like(std), "fp32")  # identity: rows stay readable
    epochs = memory_epochs(ArrayData(X, Y, block_rows=40), mask, 32, torch.Generator().manual_seed(0), prepare)
    for _ in range(2):
        batches = list(next(epochs))
        rows = torch.cat([xb[:, 0] for xb, _ in batches]).numpy().astype(np.int64)
        np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(mask))
        labels = torch.cat([yb[:, 1] for _, yb in batches]).numpy()
        np.testing.assert_array_equal(labels, rows % 2)  # each row keeps its own labels
        np.testing.assert_array_equal(torch.cat([xb[:, 1:] for xb, _ in batches]).numpy(),
                                      X[rows, 1:].astype(np.float32))


@pytest.mark.slow
def test_streamed_batches_are_prepared_in_the_worker():
    X, mean, std = features(n=200)
    mask = np.ones(len(X), bool)
    prepare = TrainInput(mean, std, "bf16")
    stream = BlockStream(ArrayData(X, np.zeros((len(X), 2), np.uint8), block_rows=30), mask, 16, 2, 0, prepare)
    batches = [xb for xb, _ in next(stream.loader(1))]
    assert all(xb.dtype == torch.bfloat16 for xb in batches)
    got, want = torch.cat(batches).float().numpy(), prepare(X).float().numpy()

    def by_row(A):  # the same rows in another order: sort them lexicographically
        return A[np.lexsort(A.T[::-1])]

    np.testing.assert_array_equal(by_row(got), by_row(want))
