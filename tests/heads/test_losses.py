"""The asymmetric loss against the sigmoid cross-entropy, torch's BCEWithLogits and the paper's
formula written naively; its numerics at extreme logits and under bf16 autocast; the MLP hook."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashtagkit.heads import MLPHead, make_head
from hashtagkit.heads.losses import asymmetric_loss, sigmoid_cross_entropy, training_loss
from hashtagkit.heads.mlp import caffe_loss


def logits_and_targets(n=16, c=30, scale=4.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=dtype) * scale)
    y = (torch.rand(n, c, generator=g) < 0.2).to(dtype)
    return x, y


def naive_asl(x: torch.Tensor, y: torch.Tensor, gp: float, gn: float, clip: float) -> torch.Tensor:
    """The paper's equations as written (Ridnik et al. 2021, eq. 6 and 7), in float64: fine for
    moderate logits, where log(sigmoid(x)) does not underflow."""
    p = torch.sigmoid(x)
    p_m = torch.clamp(p - clip, min=0)
    pos = (1 - p) ** gp * torch.log(p)
    neg = p_m ** gn * torch.log(1 - p_m)
    return -(y * pos + (1 - y) * neg).sum() / len(x)


def test_zero_gammas_and_clip_equal_the_sigmoid_cross_entropy_exactly():
    x, y = logits_and_targets(scale=30.0)  # saturated logits included
    asl = asymmetric_loss(x, y, gamma_pos=0, gamma_neg=0, clip=0)
    torch_bce = torch.nn.BCEWithLogitsLoss(reduction="sum")(x, y) / len(x)
    assert torch.allclose(asl, caffe_loss(x, y), rtol=1e-12, atol=0)
    assert torch.allclose(asl, torch_bce, rtol=1e-12, atol=0)
    assert torch.equal(sigmoid_cross_entropy(x, y), caffe_loss(x, y))
    # and their gradients
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    asymmetric_loss(xa, y, 0, 0, 0).backward()
    torch.nn.functional.binary_cross_entropy_with_logits(xb, y, reduction="sum").div(len(x)).backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("gp,gn,clip", [(0, 4, 0.05), (1, 4, 0.05), (0, 2, 0), (2, 0, 0.1), (0.5, 3.5, 0.2)])
def test_equals_the_papers_formula_with_its_gradient(gp, gn, clip):
    x, y = logits_and_targets(scale=3.0, seed=1)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, ref = asymmetric_loss(xa, y, gp, gn, clip), naive_asl(xb, y, gp, gn, clip)
    assert torch.allclose(ours, ref, rtol=1e-10)
    ours.backward()
    ref.backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-8, atol=1e-12)


def test_a_negative_below_the_clip_costs_nothing_and_easy_negatives_weigh_less():
    x = torch.tensor([[-5.0, 0.0, 3.0]], dtype=torch.float64, requires_grad=True)  # p = 0.0067, 0.5, 0.95
    y = torch.zeros(1, 3, dtype=torch.float64)
    asymmetric_loss(x, y, 0, 4, 0.05).backward()
    assert x.grad[0, 0] == 0  # p - clip < 0: shifted to 0, no loss, no gradient
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x.detach(), y, reduction="none")[0]
    each = [float(asymmetric_loss(x.detach()[:, [j]], y[:, [j]], 0, 4, 0.05)) for j in range(3)]
    assert each[0] == 0
    assert 0 < each[1] / float(bce[1]) < each[2] / float(bce[2]) < 1  # the harder negative keeps more of its loss


def test_finite_at_extreme_logits_in_float32():
    x = torch.tensor([[-1e4, -200.0, -90.0, 0.0, 90.0, 200.0, 1e4]] * 2, requires_grad=True)
    y = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    for gp, gn, clip in [(0, 0, 0), (0, 4, 0.05), (1, 4, 0)]:
        x.grad = None
        loss = asymmetric_loss(x, y, gp, gn, clip)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # a positive at logit -1e4 costs 1e4 (log-sigmoid), not inf as log(sigmoid(x)) would give
    assert float(asymmetric_loss(x[:1, :1].detach(), y[:1, :1], 0, 4, 0.05)) == pytest.approx(1e4)


def test_under_bf16_autocast_the_loss_is_float32_and_matches_the_same_logits_outside():
    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 30)
    inputs = torch.randn(8, 12)
    y = (torch.rand(8, 30) < 0.2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(inputs)
        assert logits.dtype == torch.bfloat16
        inside = asymmetric_loss(logits, y)
    outside = asymmetric_loss(logits.float(), y)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, outside)


def test_training_loss_dispatches_on_the_config():
    x, y = logits_and_targets()
    assert torch.equal(training_loss(x, y, {}), caffe_loss(x, y))  # no key: the paper's loss
    cfg = {"loss": "asl", "asl_gamma_pos": 1.0, "asl_gamma_neg": 3.0, "asl_clip": 0.1}
    assert torch.equal(training_loss(x, y, cfg), asymmetric_loss(x, y, 1.0, 3.0, 0.1))
    with pytest.raises(ValueError, match="unknown loss"):
        training_loss(x, y, {"loss": "hinge"})


def blobs(n=240, d=24, c=8, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, c)) < 0.25).astype(np.uint8)
    X = np.maximum(Y @ rng.normal(0, 1, (c, d)) + rng.normal(0, 0.5, (n, d)), 0).astype(np.float32)
    return X, Y


def test_mlp_with_asl_at_zero_trains_as_the_paper_loss_and_asl_is_recorded(tmp_path):
    X, Y = blobs()
    common = {"hidden": 32, "epochs": 3, "precision": "fp32", "device": "cpu", "workers": 0}
    bce = MLPHead(**common).fit(X, Y)
    same = MLPHead(**common, loss="asl", asl_gamma_pos=0, asl_gamma_neg=0, asl_clip=0).fit(X, Y)
    assert np.allclose(bce.predict_proba(X), same.predict_proba(X), atol=1e-4)
    assert "loss" not in bce.history_["config"]  # the default config is what it was before the option
    asl = MLPHead(**common, loss="asl").fit(X, Y)
    assert asl.history_["config"]["loss"] == "asl" and asl.history_["config"]["asl_gamma_neg"] == 4.0
    # the output biases start at the prior for the paper's loss (and asl at 0/0/0, which is it), at
    # PyTorch's init for asl with a clip: a prior start would leave every negative below it
    assert [h.history_["output_bias_init"] for h in (bce, same, asl)] == ["prior", "prior", "default"]
    assert not np.allclose(asl.predict_proba(X), bce.predict_proba(X), atol=1e-3)
    asl.save(tmp_path / "m")
    loaded = MLPHead.load(tmp_path / "m")
    assert loaded.get_params()["loss"] == "asl"
    assert json.loads((tmp_path / "m" / "head.json").read_text())["params"]["asl_clip"] == 0.05
    assert np.array_equal(loaded.predict_proba(X), asl.predict_proba(X))


@pytest.mark.parametrize("params,needle", [({"loss": "focal"}, "loss must be one of bce, asl"),
                                           ({"asl_clip": 1.0}, "asl_clip must be a number in [0, 1)"),
                                           ({"asl_gamma_neg": -1}, "asl_gamma_neg must be a number >= 0")])
def test_bad_loss_settings_are_one_line_errors(params, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        make_head("mlp", **params)


def test_prior_started_negatives_give_asl_no_gradient_and_the_default_start_does():
    """Why a real asl does not start from the prior: at the log-odds of a rare tag's frequency
    every negative sits below the clip, so its gradient is exactly 0; near p = 0.5 it is not."""
    from hashtagkit.heads.mlp import output_bias_init

    y = torch.zeros(4, 3, dtype=torch.float64)
    for start, expect_zero in ((np.log(0.01 / 0.99), True), (0.0, False)):
        x = torch.full((4, 3), start, dtype=torch.float64, requires_grad=True)
        asymmetric_loss(x, y, 0.0, 4.0, 0.05).backward()
        assert (x.grad.abs().max().item() == 0) is expect_zero
    assert output_bias_init({}) == "prior"
    assert output_bias_init({"loss": "asl", "asl_gamma_pos": 0, "asl_gamma_neg": 0, "asl_clip": 0}) == "prior"
    # without a shift a negative keeps a gradient (p^gamma- weighted), and the prior start measured better
    assert output_bias_init({"loss": "asl", "asl_gamma_pos": 0, "asl_gamma_neg": 1.0, "asl_clip": 0}) == "prior"
    assert output_bias_init({"loss": "asl", "asl_gamma_pos": 0, "asl_gamma_neg": 0.0, "asl_clip": 0.05}) == "default"
