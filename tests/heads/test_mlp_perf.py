"""The MLP's training data path (issue #16, item 2): rows reach the first Linear standardised in
its matmul's dtype, bit-identical to what the model's own Standardize under autocast gives, and
the cached path still yields every training row once an epoch. Its training step (issue #27,
item 1): bf16 working copies of float32 master weights compute what bf16 autocast computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashtagkit.devices import autocast, cpu_has_bf16
from hashtagkit.heads import MLPHead
from hashtagkit.heads import mlp as mlp_module
from hashtagkit.heads.data import ArrayData
from hashtagkit.heads.losses import training_loss
from hashtagkit.heads.mlp import BlockStream, MasterWeightStep, Standardize, TrainInput, build_mlp, memory_epochs

CPU = torch.device("cpu")


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


def train_steps(master: bool, dropout: float, cfg: dict, steps: int = 6, d=40, h=32, c=12, batch=16):
    """`steps` AdamW steps of the layers after Standardize on bf16 rows, from one seed's weights
    and dropout masks: with MasterWeightStep, or the autocast loop MLPHead ran before it."""
    torch.manual_seed(0)
    layers = build_mlp(d, h, c, dropout)[1:].train()
    X = torch.randn(2 * batch, d).to(torch.bfloat16)  # two batches, taken in turn
    Y = (torch.rand(2 * batch, c) < 0.2).float()
    opt = torch.optim.AdamW(layers.parameters(), lr=3e-3, weight_decay=1e-4, fused=True)
    step = MasterWeightStep(layers, cfg, CPU) if master else None
    torch.manual_seed(1)
    losses = []
    for i in range(steps):
        xb, yb = X[i % 2 * batch :][:batch], Y[i % 2 * batch :][:batch]
        if master:
            loss = step(xb, yb)
            opt.step()
            step.refresh()
        else:
            with autocast(CPU, "bf16"):
                loss = training_loss(layers(xb).float(), yb, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
    return losses, layers, step


@pytest.mark.parametrize("dropout, cfg", [(0.5, {}), (0.0, {}),
                                          (0.3, {"loss": "asl", "asl_gamma_pos": 0.0, "asl_gamma_neg": 4.0,
                                                 "asl_clip": 0.05})])
def test_master_weight_step_computes_what_autocast_computes(dropout, cfg):
    want, ref, _ = train_steps(False, dropout, cfg)
    got, layers, step = train_steps(True, dropout, cfg)
    # the same ops on the same bf16 operands, the same dropout masks: equal to bf16 tolerance (here, exactly)
    np.testing.assert_allclose(got, want, rtol=1e-2)
    for p, q in zip(layers.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-3)
    assert got[4] < got[0] and got[5] < got[1]  # it trains: each batch's loss falls
    # the masters (the model's parameters, which the optimizer steps) stay float32 with float32
    # gradients; the forward and backward run on bf16 working copies equal to the masters rounded
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in layers.parameters())
    assert all(w.dtype == torch.bfloat16 for w in step.work)
    for w, p in zip(step.work, layers.parameters(), strict=True):
        assert torch.equal(w, p.detach().to(torch.bfloat16))


def test_master_weight_step_takes_a_smaller_last_batch():
    torch.manual_seed(0)
    layers = build_mlp(20, 16, 5, 0.5)[1:].train()
    step = MasterWeightStep(layers, {}, CPU)
    big = step(torch.randn(32, 20).to(torch.bfloat16), (torch.rand(32, 5) < 0.3).float())
    small = step(torch.randn(7, 20).to(torch.bfloat16), (torch.rand(7, 5) < 0.3).float())
    assert torch.isfinite(big) and torch.isfinite(small) and step.rows == 32
    with pytest.raises(ValueError, match="ReLU, Dropout, Linear"):
        MasterWeightStep(nn_sequential_without_dropout(), {}, CPU)


def nn_sequential_without_dropout():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


@pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 training is chosen on CPUs with native bf16")
def test_mlp_head_fits_alike_with_either_step(monkeypatch):
    rng = np.random.default_rng(0)
    Y = (rng.random((400, 8)) < 0.25).astype(np.uint8)
    X = np.maximum(Y @ rng.normal(0, 1, (8, 24)) + rng.normal(0, 0.5, (400, 24)), 0).astype(np.float32)
    made = []
    real = mlp_module.MasterWeightStep
    monkeypatch.setattr(mlp_module, "MasterWeightStep", lambda *a, **k: made.append(1) or real(*a, **k))
    heads = {}
    for master in (False, True):
        head = MLPHead(hidden=32, epochs=2, random_state=3)
        head._master_weights = master
        heads[master] = head.fit(X, Y)
    assert made == [1]  # only the second fit took the master-weight step
    assert heads[True].history_["precision"] == "bf16"
    losses = [[e["loss"] for e in heads[m].history_["epochs"]] for m in (False, True)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-2)
    np.testing.assert_allclose(heads[True].predict_proba(X[:50]), heads[False].predict_proba(X[:50]), atol=1e-2)
    assert all(p.grad is None and p.dtype == torch.float32 for p in heads[True].model_.parameters())
    # fp32 training keeps the autocast loop (autocast disabled): no working copies to make
    MLPHead(hidden=16, epochs=1, precision="fp32").fit(X, Y)
    assert made == [1]
