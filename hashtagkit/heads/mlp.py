"""The paper's classifier: input -> 4,096 -> 4,096 -> C, ReLU, sigmoid cross-entropy (torch).

Two presets (any value can be overridden with its own parameter):

- `paper`: what the paper states (SGD, batch 100, learning rate 0.1 divided by 10 every 30,000
  iterations, 100,000 iterations, Caffe's sigmoid cross-entropy: summed over classes and
  averaged over the batch) plus what it leaves unsaid, chosen as Caffe's usual VGG solver
  would have it: momentum 0.9, weight decay 5e-4, no dropout, PyTorch's default
  (Kaiming-uniform) initialisation, no early stopping.

Both presets standardise the input with the training set's per-column mean and std (saved with
the model) and start the output biases at the log-odds of each class's training frequency;
without these the network sat on the popularity prior for every epoch we could afford on the
planted HARRISON-size store.
- `fast` (the default): fused AdamW (lr 1e-3, weight decay 1e-4), batch 512 (smaller on small
  data, so that an epoch has at least 50 steps), dropout 0.5, a
  cosine schedule over at most 30 epochs, and early stopping on Recall@5 of a 10% validation
  part of the training rows (patience 3 epochs, not before epoch 5; the best epoch's weights
  are kept). Validation rows without a hashtag are left out of that Recall@5 and counted
  (`n_val_untagged` in history.json); if none is left, the validation loss is watched and
  recorded as `val_loss` instead. The paper's 100,000 iterations of 100 rows would take many
  hours on a 2-core CPU (benchmarks/results/heads.md projects them from measured steps), so
  `fast` is the default.

bf16 on a CPU that supports it, CUDA (bf16 or fp16) under autocast when present. On the CPU
the bf16 step runs on bf16 working copies of float32 master weights (`MasterWeightStep`):
what autocast computes, value for value, without autocast's fresh weight casts and gradients
(1.2x the steps/s on a 2-core AVX-512 bf16 CPU: benchmarks/results/mlp_step.md).

The training rows come from a `TrainingData` (a store's rows, block by block). Up to
`cache_limit_gb` (4 GB: HARRISON is 0.9 GB) they are held in memory, standardised in the first
layer's input dtype (`TrainInput`: bf16 under bf16 autocast, the size of the stored float16),
and each epoch is a fresh permutation; above it they are streamed (`BlockStream`): block order shuffled per
epoch, rows shuffled within a buffer of `buffer_blocks` blocks, read ahead of the model by a
thread of this process (`workers=0`, the default on 2 cores or fewer) or by `workers` loader
processes, so memory stays that of the buffers however many rows there are. Both paths hold
out the same validation rows (val_fraction, at most VAL_ROWS) and take the standardisation
statistics and the prior from one pass over the blocks; `cache=memory|stream` forces a path.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hashtagkit import ddp, metrics
from hashtagkit.devices import DEVICES, PRECISIONS, autocast, pick_device, pick_precision
from hashtagkit.heads.base import InvalidParameterError, Param, check_memory
from hashtagkit.heads.data import VAL_ROWS, TrainingData
from hashtagkit.heads.estimator import HeadEstimator
from hashtagkit.heads.losses import ASL_DEFAULTS, LOSSES, sigmoid_cross_entropy, training_loss
from hashtagkit.stores.store import read_ahead

PRESETS = {
    "paper": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 100,
              "iterations": 100_000, "epochs": None, "step_every": 30_000, "schedule": "step", "dropout": 0.0,
              "val_fraction": 0.0, "patience": None, "min_epochs": 0},
    "fast": {"optimizer": "adamw", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 512,
             "iterations": None, "epochs": 30, "step_every": None, "schedule": "cosine", "dropout": 0.5,
             "val_fraction": 0.1, "patience": 3, "min_epochs": 5},
}
MODEL_FILE, HISTORY_FILE = "model.pt", "history.json"
# Training rows are held in memory (float16) up to this many GB, and streamed from the store
# above it. 4 GB is HARRISON four times over (57,383 x 8,192 float16 = 0.9 GB) and leaves room
# on a 16 GB laptop; the cached path only saves the block reads (benchmarks/results/mlp_stream.md).
CACHE_LIMIT_GB = 4.0


class Standardize(nn.Module):
    """(x - mean) / std with the training set's statistics, kept as buffers so they are saved
    with the weights. fc7 features are non-negative with a large common offset; centring them
    made the MLP leave the all-prior plateau in one epoch instead of never, on the planted
    store (benchmarks/results/heads.md)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        Standardize(n_in),
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, n_out),
    )


def training_stats(data: TrainingData, train_mask: np.ndarray, world: ddp.World = ddp.SINGLE):
    """Per-column mean and std of the training rows' features and each class's frequency, in
    one pass over the blocks with float64 sums (a zero-variance column gets std 1): the
    statistics of the whole matrix without ever holding it (under DDP, of every rank's share:
    the sums are all-reduced). The same pass collects the rows held out of training (the
    validation rows: `train_mask` False) of these blocks, as (Xv, Yv)."""
    total, squares = np.zeros(data.n_features), np.zeros(data.n_features)
    positives, n = np.zeros(data.n_classes), 0
    held_x, held_y = [np.zeros((0, data.n_features), data.dtype)], [np.zeros((0, data.n_classes), np.uint8)]
    for i, (X, Y) in enumerate(data.blocks()):
        keep = train_mask[data.bounds[i]:data.bounds[i + 1]]
        held_x.append(X[~keep])
        held_y.append(np.asarray(Y[~keep], dtype=np.uint8))
        part = np.asarray(X[keep], dtype=np.float64)
        total += part.sum(axis=0)
        squares += (part * part).sum(axis=0)
        positives += (Y[keep] != 0).sum(axis=0)
        n += int(keep.sum())
    d, c = data.n_features, data.n_classes
    sums = ddp.all_sum(np.concatenate([total, squares, positives, [n]]), world)  # over the ranks' shares
    total, squares, positives, n = sums[:d], sums[d : 2 * d], sums[2 * d : 2 * d + c], sums[-1]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean * mean, 0))
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    return mean.astype(np.float32), std, positives / n, (np.concatenate(held_x), np.concatenate(held_y))


class TrainInput:
    """Rows as the first Linear reads them in training: standardised with the training
    statistics, in the dtype of that layer's matmul (bf16 or fp16 under autocast, else float32).

    Under autocast the model's own `Standardize` computes in float32 and autocast then rounds
    the result to bf16/fp16: this does the same arithmetic, so the values are bit-identical, but
    once per row (the cached path) or in the loader's worker (the streamed path), not on the
    training step's critical path; the step then runs the layers after `Standardize`.
    Picklable, so spawned loader workers get it."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, precision: str) -> None:
        self.mean, self.std = torch.from_numpy(np.asarray(mean, np.float32)), torch.from_numpy(np.asarray(std, np.float32))
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)

    def __call__(self, X: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(X)).float()  # a new float32 tensor: the in-place ops below are safe
        return x.sub_(self.mean).div_(self.std).to(self.dtype)


def memory_epochs(data: TrainingData, train_mask: np.ndarray, batch: int, gen: torch.Generator,
                  prepare: TrainInput | None = None):
    """The cached path: every training row in memory (as `prepare` makes it, block by block;
    without it as stored, float16) with its labels as uint8, each epoch a fresh permutation of
    them cut into batches. Endless: the caller stops."""
    n, parts_y, at = int(train_mask.sum()), [], 0
    Xt = None
    for i, (X, Y) in enumerate(data.blocks()):
        keep = train_mask[data.bounds[i]:data.bounds[i + 1]]
        x = prepare(X[keep]) if prepare is not None else torch.from_numpy(np.asarray(X[keep], dtype=np.float16))
        if Xt is None:
            Xt = torch.empty((n, data.n_features), dtype=x.dtype)
        Xt[at : at + len(x)] = x
        parts_y.append(np.asarray(Y[keep], dtype=np.uint8))
        at += len(x)
    Yt = torch.from_numpy(np.concatenate(parts_y) if parts_y else np.zeros((0, data.n_classes), np.uint8))
    if Xt is None:
        Xt = torch.zeros((0, data.n_features))
    while True:
        perm = torch.randperm(n, generator=gen)
        yield ((Xt[idx], Yt[idx]) for idx in (perm[i : i + batch] for i in range(0, n, batch)))


def input_bytes(data: TrainingData, precision: str) -> int:
    """Bytes the cached path holds: the training rows in the first layer's input dtype, labels."""
    width = 4 if precision == "fp32" else 2
    return data.n_rows * (data.n_features * width + data.n_classes)


class BlockStream(torch.utils.data.IterableDataset):
    """The streamed path: batches of training rows read block by block from a TrainingData.

    Per epoch the block order is a fresh seeded permutation; worker w of W takes every W-th
    block of it (a disjoint share, so each block is read once an epoch), fills a buffer of
    `buffer_blocks` blocks, shuffles the rows in it and yields batches of features, as stored
    (float16) or as `prepare` makes them (`TrainInput`: standardised, in the first layer's
    dtype), and uint8 labels (converted to float32 on the device, per batch). Rows left over when a buffer
    runs dry are carried into the next, so every training row is seen once an epoch. Memory:
    the buffer, about buffer_blocks x 4 MB per worker, whatever the number of rows.

    Rows of a block are shuffled only within their buffer: with a store's chunks in image order
    (a user's albums), a larger buffer mixes more; the validation comparison in
    benchmarks/results/mlp_stream.md measures the effect at the default."""

    def __init__(self, data: TrainingData, train_mask: np.ndarray, batch: int, buffer_blocks: int, seed: int,
                 prepare: TrainInput | None = None) -> None:
        self.data, self.train_mask, self.batch = data, train_mask, batch
        self.buffer_blocks, self.seed, self.epoch = buffer_blocks, seed, -1
        self.prepare = prepare  # applied per batch, in the worker process when there is one

    def _x(self, X: np.ndarray) -> torch.Tensor:
        return self.prepare(X) if self.prepare is not None else torch.from_numpy(X)

    def __iter__(self):
        self.epoch += 1  # each pass is the next epoch, in this process and in each (persistent) worker alike
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.data.n_blocks)[worker::workers]
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        carry_x, carry_y = [], []
        for start in range(0, len(order), self.buffer_blocks):
            xs, ys = list(carry_x), list(carry_y)
            for b in order[start : start + self.buffer_blocks]:
                X, Y = self.data.block(int(b))
                keep = self.train_mask[self.data.bounds[b]:self.data.bounds[b + 1]]
                xs.append(np.asarray(X[keep], dtype=np.float16))
                ys.append(np.asarray(Y[keep], dtype=np.uint8))
            X, Y = np.concatenate(xs), np.concatenate(ys)
            perm = rng.permutation(len(X))
            full = len(X) - len(X) % self.batch
            for i in range(0, full, self.batch):
                idx = perm[i : i + self.batch]
                yield self._x(X[idx]), torch.from_numpy(Y[idx])
            rest = perm[full:]
            carry_x, carry_y = [X[rest]], [Y[rest]]
        if carry_x and len(carry_x[0]):
            yield self._x(carry_x[0]), torch.from_numpy(carry_y[0])

    def loader(self, workers: int, pin_memory: bool = False):
        """Endless epochs, each a pass over the blocks (the caller stops). With `workers` > 0 the
        blocks are read and shuffled by that many persistent processes that keep 4 batches each
        ready ahead of the model. They are spawned, not forked: a fork would inherit the Zarr
        store's I/O thread half-alive; a StoreData pickles as its path and rows and reopens.
        With 0 a thread of this process reads ahead (`hashtagkit.stores.store.read_ahead`)."""
        if not workers:
            while True:
                yield read_ahead(iter(self), PREFETCH, name="mlp-prefetch")
        loader = torch.utils.data.DataLoader(self, batch_size=None, num_workers=workers, prefetch_factor=4,
                                             persistent_workers=True, multiprocessing_context="spawn",
                                             pin_memory=pin_memory)
        while True:
            yield loader


PRESET = "the preset's"


def output_bias_init(cfg: dict) -> str:
    """How the output layer's biases start: at the log-odds of each tag's training frequency
    ("prior"), so the first updates go into the features instead of into learning that most tags
    are rare; at PyTorch's own init ("default", scores near 0.5) for the asymmetric loss with a
    probability shift (clip > 0). From the prior every negative of a rare tag sits below the
    shift, where its loss and gradient are exactly 0, so only positives push and every tag rises.
    Measured on the planted HARRISON-size store (hidden 512, 3 epochs; options_planted.md): asl
    0/4/0.05 reached P@1 10.8 from the prior and 18.6 from the default start (seed 0), while asl
    0/1/0 (no shift) reached 21.6 from the prior and 10.2 from the default start; the start the
    loss's own constant optimum gives (p ~0.24 for 0/4/0.05) did no better than the prior (10.0)."""
    return "default" if cfg.get("loss", "bce") == "asl" and cfg.get("asl_clip", 0) > 0 else "prior"


PREFETCH = 4  # batches read ahead of the model, as the loader processes' prefetch_factor


def default_workers(cores: int | None = None) -> int:
    """Loader processes for the streamed path when `workers` is not given: none on 2 cores or
    fewer, where a process of its own takes the model's cores and the in-process reading thread
    keeps a streamed step near a plain torch loop's (benchmarks/results/roofline.md), else one."""
    return 0 if (cores or os.cpu_count() or 1) <= 2 else 1


def timed(batches, waits: list[float]):
    """The batches, each one's wait for the data path appended to `waits` (seconds): a streamed
    epoch that starves the model shows here, and the first wait holds the loader's start."""
    batches = iter(batches)
    while True:
        started = time.perf_counter()
        item = next(batches, None)
        if item is None:
            return
        waits.append(time.perf_counter() - started)
        yield item


caffe_loss = sigmoid_cross_entropy  # the paper's loss, as Caffe computes it (heads/losses.py)


class MasterWeightStep:
    """One training step of the layers after `Standardize` (Linear, then ReLU-Dropout-Linear
    pairs) in bf16 on the CPU from float32 master weights: what bf16 autocast computes, value
    for value, without its per-step costs (issue #27; benchmarks/results/mlp_step.md).

    The masters are the model's own float32 Parameters, and the optimizer steps them as before.
    The forward and backward run on bf16 working copies of them, cast in place once after each
    optimizer step (`refresh`), where autocast casts every weight in every forward into a fresh
    tensor and casts every bf16 weight gradient into a fresh float32 one in the backward. Fresh
    tensors of 16-134 MB cost more than their casts: each is new memory from the system, faulted
    in page by page on first touch, and handed back when freed. Here every tensor of the step
    (working weights, their gradients in bf16, the masters' float32 gradients, activations,
    dropout masks) is allocated once and written in place, and the backward is written out: the GEMMs autograd would run (mm of the same operands in the same
    layout, into those buffers), the dropout and ReLU backward, the bias gradients as autograd's
    sum over the batch. Only the loss goes through autograd, so every loss of `training_loss`
    works. Dropout draws its masks with the same calls in the same order as `nn.Dropout`, so a
    seed gives the same masks; tests/heads/test_mlp_perf.py checks the losses and weights
    against an autocast loop step by step."""

    def __init__(self, layers: nn.Sequential, cfg: dict, device: torch.device, precision: str = "bf16") -> None:
        mods = list(layers)
        self.linears = mods[0::3]
        ok = len(mods) % 3 == 1 and all(isinstance(m, nn.Linear) for m in self.linears) \
            and all(isinstance(m, nn.ReLU) for m in mods[1::3]) and all(isinstance(m, nn.Dropout) for m in mods[2::3])
        if not ok:
            raise ValueError("MasterWeightStep takes Linear followed by (ReLU, Dropout, Linear) groups")
        self.p = [m.p for m in mods[2::3]]
        self.cfg, self.device, self.precision = cfg, device, precision
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.masters = [t for lin in self.linears for t in (lin.weight, lin.bias)]
        with torch.no_grad():
            self.work = [t.detach().to(self.dtype) for t in self.masters]
        self.grads = [torch.empty_like(w) for w in self.work]
        for t in self.masters:  # kept from step to step: each step overwrites them
            t.grad = torch.zeros_like(t)
        self.rows = 0

    @torch.no_grad()
    def refresh(self) -> None:
        """Cast the masters into the working copies (after each optimizer step)."""
        for w, t in zip(self.work, self.masters, strict=True):
            w.copy_(t)

    def _buffers(self, n: int) -> None:
        if n <= self.rows:
            return
        self.rows = n
        new = lambda width: torch.empty((n, width), dtype=self.dtype, device=self.device)  # noqa: E731
        widths = [lin.out_features for lin in self.linears]
        self.out = [new(w) for w in widths]  # each Linear's output (ReLU in place on the hidden ones)
        self.noise = [new(w) if p > 0 else None for w, p in zip(widths, self.p, strict=False)]
        self.dropped = [new(w) if p > 0 else None for w, p in zip(widths, self.p, strict=False)]
        self.back = [new(w) for w in widths[:-1]]  # the gradient w.r.t. each hidden layer's output

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one batch (`xb` in the working dtype): leaves the gradients
        in the masters' `.grad` and returns the loss (a float32 scalar)."""
        n, last = len(xb), len(self.linears) - 1
        self._buffers(n)
        inputs, relu_out = [xb.to(self.dtype)], []
        with torch.no_grad():
            for i in range(last + 1):
                w, b, out = self.work[2 * i], self.work[2 * i + 1], self.out[i][:n]
                torch.addmm(b, inputs[-1], w.t(), out=out)  # = F.linear(x, w, b), as nn.Linear runs it
                if i == last:
                    break
                out.relu_()
                relu_out.append(out)
                if self.p[i] > 0:  # nn.Dropout's own arithmetic: a bernoulli(1 - p) mask / (1 - p)
                    noise = self.noise[i][:n]
                    noise.bernoulli_(1 - self.p[i])
                    noise.div_(1 - self.p[i])
                    inputs.append(torch.mul(out, noise, out=self.dropped[i][:n]))
                else:
                    inputs.append(out)
        logits = self.out[last][:n].float().requires_grad_()
        with torch.enable_grad(), autocast(self.device, self.precision):
            loss = training_loss(logits, yb, self.cfg)
        (grad,) = torch.autograd.grad(loss, logits)
        with torch.no_grad():
            g = grad.to(self.dtype)
            for i in range(last, -1, -1):
                torch.mm(g.t(), inputs[i], out=self.grads[2 * i])
                torch.sum(g, 0, out=self.grads[2 * i + 1])
                if i == 0:
                    break
                back = self.back[i - 1][:n]
                torch.mm(g, self.work[2 * i], out=back)
                if self.p[i - 1] > 0:
                    back.mul_(self.noise[i - 1][:n])
                torch.ops.aten.threshold_backward.grad_input(back, relu_out[i - 1], 0, grad_input=back)
                g = back
            for t, gb in zip(self.masters, self.grads, strict=True):
                t.grad.copy_(gb)
        return loss.detach()


class Validation:
    """What early stopping watches on the held-out rows (Xv, Yv: at most VAL_ROWS of them).

    Recall@5 over the validation rows that have at least one hashtag: a row without one has
    no recall (0/0), so it is counted (`n_untagged`) and left out, as evaluation leaves it out.
    When no validation row has a hashtag (a store prepared with `--min-tags 0` can give that),
    the validation loss is watched instead, under its own key `val_loss`, never under a
    recall's name. `score` returns (the value to record, a gain where higher is better).
    Under DDP each rank holds the validation rows of its share: counts and sums are
    all-reduced, so every rank sees the same value and stops at the same epoch."""

    def __init__(self, Yv: np.ndarray, world: ddp.World = ddp.SINGLE) -> None:
        self.world = world
        self.tagged = np.flatnonzero(Yv.any(axis=1)) if len(Yv) else np.zeros(0, np.int64)
        n_tagged, n_rows = ddp.all_sum([len(self.tagged), len(Yv)], world)
        self.n_untagged = int(n_rows - n_tagged)
        self.key = "val_recall@5" if n_tagged else "val_loss"

    def score(self, head: MLPHead, Xv: np.ndarray, Yv: np.ndarray) -> tuple[float, float]:
        if self.key == "val_recall@5":
            rows = self.tagged
            local = metrics.recall_at_k(head.predict_proba(Xv[rows]), Yv[rows], 5) * len(rows) if len(rows) else 0.0
            total, count = ddp.all_sum([local, len(rows)], self.world)
            recall = float(total / count)
            return recall, recall
        local = 0.0
        if len(Yv):
            logits = torch.from_numpy(head.decision_function(Xv))
            local = float(caffe_loss(logits, torch.from_numpy(Yv.astype(np.float32)))) * len(Yv)
        total, count = ddp.all_sum([local, len(Yv)], self.world)
        loss = float(total / count)
        return loss, -loss


class MLPHead(HeadEstimator):
    name = "mlp"
    # bf16 on the CPU, one process: train with MasterWeightStep (False: the autocast loop, kept
    # for comparison in benchmarks/mlp_step.py and tests/heads/test_mlp_perf.py)
    _master_weights = True
    param_spec = {
        "preset": Param(str, choices=tuple(PRESETS)),
        "hidden": Param(int, low=1),
        "dropout": Param(float, low=0, high=1, high_open=True, none=True, none_means=PRESET),
        "lr": Param(float, low=0, low_open=True, none=True, none_means=PRESET),
        "batch_size": Param(int, low=1, none=True, none_means=PRESET),
        "iterations": Param(int, low=1, none=True, none_means=PRESET),
        "epochs": Param(int, low=1, none=True, none_means=PRESET),
        "weight_decay": Param(float, low=0, none=True, none_means=PRESET),
        "momentum": Param(float, low=0, high=1, high_open=True, none=True, none_means=PRESET),
        "val_fraction": Param(float, low=0, high=1, high_open=True, none=True, none_means=PRESET),
        "patience": Param(int, low=0, none=True, none_means=PRESET + "; 0 never stops early"),
        "cache": Param(str, choices=("auto", "memory", "stream")),
        "cache_limit_gb": Param(float, low=0),
        "buffer_blocks": Param(int, low=1),
        "workers": Param(int, low=0, high=64, none=True,
                         none_means="0 on 2 cores or fewer (a reading thread), else 1 loader process"),
        "device": Param(str, choices=DEVICES),
        "precision": Param(str, choices=PRECISIONS),
        "random_state": Param(int, low=0, high=2**32 - 1),
        "loss": Param(str, choices=LOSSES),
        "asl_gamma_pos": Param(float, low=0),
        "asl_gamma_neg": Param(float, low=0),
        "asl_clip": Param(float, low=0, high=1, high_open=True),
    }

    def __init__(self, preset: str = "fast", hidden: int = 4096, dropout: float | None = None, lr: float | None = None,
                 batch_size: int | None = None, iterations: int | None = None, epochs: int | None = None,
                 weight_decay: float | None = None, momentum: float | None = None, val_fraction: float | None = None,
                 patience: int | None = None, cache: str = "auto", cache_limit_gb: float = CACHE_LIMIT_GB,
                 buffer_blocks: int = 16, workers: int | None = None, device: str = "auto", precision: str = "auto", random_state: int = 0,
                 loss: str = "bce", asl_gamma_pos: float = ASL_DEFAULTS["asl_gamma_pos"],
                 asl_gamma_neg: float = ASL_DEFAULTS["asl_gamma_neg"], asl_clip: float = ASL_DEFAULTS["asl_clip"]) -> None:
        self.preset = preset
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.iterations = iterations
        self.epochs = epochs
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.val_fraction = val_fraction
        self.patience = patience
        self.cache = cache
        self.cache_limit_gb = cache_limit_gb
        self.buffer_blocks = buffer_blocks
        self.workers = workers
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.loss = loss  # "bce": the paper's sigmoid cross-entropy; "asl": the asymmetric loss (heads/losses.py)
        self.asl_gamma_pos = asl_gamma_pos
        self.asl_gamma_neg = asl_gamma_neg
        self.asl_clip = asl_clip

    def config(self) -> dict:
        """The preset with every explicitly given parameter laid over it."""
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        cfg = dict(PRESETS[self.preset])
        for key in cfg:
            value = getattr(self, key, None)
            if value is not None:
                cfg[key] = value
        if self.iterations is not None:
            cfg["epochs"] = None
        elif self.epochs is not None:
            cfg["iterations"] = None
        if self.loss != "bce":  # only then: a config without "loss" means the paper's loss (bench keys stay)
            cfg.update(loss=self.loss, asl_gamma_pos=self.asl_gamma_pos, asl_gamma_neg=self.asl_gamma_neg,
                       asl_clip=self.asl_clip)
        return cfg

    def fit_data(self, data: TrainingData) -> MLPHead:
        """Train from blocks of `data`: held in memory when they fit under `cache_limit_gb`
        (`cache="auto"`), else streamed block by block (see `BlockStream`). Both paths hold out
        the same validation rows and compute the same statistics in one pass over the blocks."""
        from tqdm import tqdm

        self._begin_fit(data)
        cfg = self.config()
        device = pick_device(self.device)
        if device.type == "cpu":  # weights, their gradients and the optimizer's two moments, float32
            d, h, c = data.n_features, self.hidden, data.n_classes
            check_memory(self.name, f"hidden={h}", 16 * (d * h + h * h + h * c + 2 * h + c),
                         f"a {d} -> {h} -> {h} -> {c} network's weights, gradients and optimizer state")
        precision = pick_precision(self.precision, device, training=True)
        world = ddp.current()
        gen = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        n = data.n_rows
        n_val = min(int(n * cfg["val_fraction"]), VAL_ROWS) if cfg["val_fraction"] and n >= 20 else 0
        val_rows = np.sort(torch.randperm(n, generator=gen)[:n_val].numpy())
        train_mask = np.ones(n, bool)
        train_mask[val_rows] = False
        n_train = n - n_val
        if world.distributed:  # this rank's rows only, from here on: equal shares, whatever the blocks
            if n_train < world.size:  # every rank decides alike, before any collective call
                raise InvalidParameterError(f"{n_train} training row(s) for {world.size} processes: use fewer processes")
            start, stop = ddp.row_share(train_mask, world)
            data, train_mask = data.rows_between(start, stop), train_mask[start:stop]
        stream = self.cache == "stream" or (self.cache == "auto" and input_bytes(data, precision) > self.cache_limit_gb * 2**30)
        mean, std, prior, (Xv, Yv) = training_stats(data, train_mask, world)
        model = build_mlp(data.n_features, self.hidden, data.n_classes, cfg["dropout"])
        model[0].mean.copy_(torch.from_numpy(mean))
        model[0].std.copy_(torch.from_numpy(std))
        bias_init = output_bias_init(cfg)
        if bias_init == "prior":
            prior = np.clip(prior, 1e-4, 1 - 1e-4)
            with torch.no_grad():  # start from the prior, so the first updates go into the features
                model[-1].bias.copy_(torch.from_numpy(np.log(prior / (1 - prior)).astype(np.float32)))
        model = model.to(device)
        if cfg["optimizer"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        else:
            # fused: one kernel for all 55M parameters (faster than foreach in a one-off timing here)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)
        batch = int(min(cfg["batch_size"], n_train))
        if self.batch_size is None and self.preset == "fast":  # small data: still ~50 steps an epoch
            batch = int(min(batch, max(32, n_train // 50)))
        per_epoch = math.ceil(n_train / batch)
        if world.distributed:  # batch is the global batch: each rank takes its part of it
            if batch % world.size:
                if self.batch_size is not None:  # an InputError too: `fit` exits 2 with one line
                    raise InvalidParameterError(f"batch_size {batch} must be a multiple of the world size {world.size} "
                                                "(it is the global batch, split evenly over the processes)")
                batch -= batch % world.size
            # every rank runs the same number of steps an epoch: the smallest share's full batches
            per_epoch = max(1, ddp.all_min(int(train_mask.sum()) // (batch // world.size), world))
        total = int(cfg["iterations"] or cfg["epochs"] * per_epoch)
        if cfg["schedule"] == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["step_every"], gamma=0.1)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        watch = Validation(Yv, world)
        step_rows = batch // world.size  # rows a process takes a step
        prepare = TrainInput(mean, std, precision)  # the rows arrive standardised: train past model[0]
        train_model = model[1:]  # a view: the same Linear modules
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(train_model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
        # bf16 on the CPU: bf16 working copies of float32 masters (MasterWeightStep); elsewhere
        # autocast (CUDA's fp16 with its GradScaler, fp32, DDP, which reduces float32 gradients)
        master_step = MasterWeightStep(train_model, cfg, device, precision) if (
            self._master_weights and device.type == "cpu" and precision == "bf16" and not world.distributed) else None
        if stream:
            source = BlockStream(data, train_mask, step_rows, self.buffer_blocks, self.random_state, prepare)
            workers = default_workers() if self.workers is None else self.workers
            epochs = source.loader(workers, pin_memory=device.type == "cuda")
        else:
            epochs = memory_epochs(data, train_mask, step_rows, gen, prepare)
        history, best, best_state, best_epoch, stale = [], -math.inf, None, None, 0
        step, bar = 0, tqdm(total=total, desc="mlp", unit="it", disable=None if world.writer else True, leave=False)
        for batches in epochs:
            if world.distributed:  # the same number of steps on every rank, or DDP waits forever
                batches = itertools.islice(batches, per_epoch)
            model.train()
            running, seen, started, waits = 0.0, 0, time.perf_counter(), []
            for xb, yb in timed(batches, waits):
                xb = xb.to(device, non_blocking=True)
                yb = yb.to(device, non_blocking=True).float()
                if master_step is not None:
                    loss = master_step(xb, yb)  # gradients in the masters' .grad, overwritten each step
                    opt.step()
                    master_step.refresh()
                else:
                    with autocast(device, precision):
                        loss = training_loss(train_model(xb).float(), yb, cfg)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                sched.step()
                step += 1
                seen += 1
                running += float(loss.detach())
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{running / seen:.4f}")
                if step >= total:
                    break
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                bar.close()
                lr = cfg.get("lr")
                raise InvalidParameterError(
                    f"mlp training diverged in epoch {len(history) + 1}: its weights are NaN or infinite "
                    f"(training loss {running / max(1, seen):.4g}); lower lr" + (f" (now {lr:g})" if lr else ""))
            record = {"epoch": len(history) + 1, "step": step, "loss": running / max(1, seen),
                      "train_s": round(time.perf_counter() - started, 3),  # the steps, data waits included
                      "data_wait_s": round(sum(waits), 3), "first_batch_s": round(waits[0] if waits else 0.0, 3)}
            if n_val:
                self.model_, self.device_, self.precision_ = model, device, precision
                started = time.perf_counter()
                record[watch.key], gain = watch.score(self, Xv, Yv)
                record["val_s"] = round(time.perf_counter() - started, 3)
                if gain > best:
                    best, stale, best_epoch = gain, 0, record["epoch"]
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    stale += 1
            history.append(record)
            if step >= total or (cfg["patience"] and n_val and stale >= cfg["patience"] and len(history) >= cfg["min_epochs"]):
                break
        bar.close()
        del master_step
        for p in model.parameters():  # the last step's gradients: not part of the fitted model
            p.grad = None
        if best_state is not None:
            model.load_state_dict(best_state)
        self.model_, self.device_, self.precision_ = model.eval(), device, precision
        self.val_rows_ = val_rows  # the held-out positions (not saved): lets a caller re-score them
        self.history_ = {"config": cfg, "batch_size": batch, "device": str(device), "precision": precision,
                         "output_bias_init": bias_init, "epochs": history,
                         "iterations": step, "n_val": n_val, "data": "stream" if stream else "memory",
                         "data_gb": round(data.nbytes / 2**30, 3), "world_size": world.size}
        if world.distributed:  # per process: its part of the global batch, the steps every rank ran an epoch
            self.history_.update({"batch_per_process": step_rows, "steps_per_epoch": per_epoch,
                                  "rows_per_epoch": per_epoch * batch, "training_rows": n_train})
        if stream:
            self.history_.update({"buffer_blocks": self.buffer_blocks, "workers": workers, "blocks": data.n_blocks})
        if n_val:
            self.history_.update({"val_metric": watch.key, "n_val_untagged": watch.n_untagged, "best_epoch": best_epoch})
        return self

    def fit_report(self) -> dict:
        h = self.history_
        return {key: h[key] for key in ("data", "data_gb", "batch_size", "iterations", "n_val", "best_epoch",
                                        "device", "precision", "world_size", "batch_per_process", "steps_per_epoch",
                                        "rows_per_epoch", "training_rows")
                if key in h}

    @torch.inference_mode()
    def _logits(self, X: np.ndarray) -> np.ndarray:
        """The logits (n, C) of checked rows as float32, 4,096 rows at a time."""
        model = self.model_.eval()
        out = np.empty((len(X), self.n_classes_), dtype=np.float32)
        for start in range(0, len(X), 4096):
            xb = torch.from_numpy(np.ascontiguousarray(X[start : start + 4096], dtype=np.float32)).to(self.device_)
            with autocast(self.device_, self.precision_):
                logits = model(xb)
            out[start : start + len(xb)] = logits.float().cpu().numpy()
        return out

    _margins = _logits

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The logits (n, C) as float32: predict_proba is their sigmoid, so `predict` (a score
        above 0.5) recommends a hashtag whose logit is above 0. Fitted on binary labels:
        scikit-learn's (n,) score for classes_[1] (see HeadEstimator._decision)."""
        return self._decision(X)

    def _predict_scores(self, X: np.ndarray) -> np.ndarray:
        return torch.sigmoid(torch.from_numpy(self._logits(X))).numpy()

    def _save_state(self, directory: Path) -> None:
        torch.save({k: v.cpu() for k, v in self.model_.state_dict().items()}, directory / MODEL_FILE)
        (directory / HISTORY_FILE).write_text(json.dumps(self.history_, indent=2) + "\n")

    def _load_state(self, directory: Path) -> None:
        self.history_ = json.loads((directory / HISTORY_FILE).read_text())
        cfg = self.history_["config"]
        self.device_ = pick_device(self.device)
        self.precision_ = self.history_["precision"] if self.device_.type == self.history_["device"].split(":")[0] \
            else pick_precision(self.precision, self.device_, training=True)
        model = build_mlp(self.n_features_, self.hidden, self.n_classes_, cfg["dropout"])
        model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
        self.model_ = model.to(self.device_).eval()
