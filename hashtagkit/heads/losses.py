"""Training losses of the MLP head: the paper's sigmoid cross-entropy and the asymmetric loss.

Why an asymmetric loss: a photo has ~5 of 997 hashtags, so each row brings ~992 negatives
whose easy gradients swamp the few positives. The asymmetric loss (Ridnik et al., "Asymmetric
Loss For Multi-Label Classification", ICCV 2021) down-weights easy negatives twice: a focal
factor p_m^gamma_neg, and a probability shift (p_m = max(p - clip, 0)) that zeroes the loss of
negatives already scored below `clip`. For a logit x, p = sigmoid(x), label y:

    L = - y (1 - p)^gamma_pos log(p) - (1 - y) p_m^gamma_neg log(1 - p_m)

With gamma_pos = gamma_neg = 0 and clip = 0 it is the sigmoid cross-entropy, exactly (tested).
Both are summed over classes and averaged over the batch, as Caffe's SigmoidCrossEntropyLoss
(the paper's learning rate assumes that scale).

Numerics: log(p) and log(1 - p) are log-sigmoids of x and -x (finite for any finite logit,
where log(sigmoid(x)) underflows to -inf at x < -104 in float32); with a shift, 1 - p_m =
min(sigmoid(-x) + clip, 1) >= clip > 0, so its log is finite too. The focal factors are
powers of numbers in [0, 1] and are skipped when their exponent is 0. Logits are computed in
float32 (or float64 if given) whatever the autocast (bf16 has 8 bits of mantissa: too coarse for a loss summed over
997 classes).
"""

from __future__ import annotations

import torch
from torch import nn

LOSSES = ("bce", "asl")
ASL_DEFAULTS = {"asl_gamma_pos": 0.0, "asl_gamma_neg": 4.0, "asl_clip": 0.05}  # the paper's


def sigmoid_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Caffe's SigmoidCrossEntropyLoss: summed over classes, averaged over the batch (torch's
    default mean over classes too would shrink the paper's lr 0.1 by C)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(logits)


def asymmetric_loss(logits: torch.Tensor, target: torch.Tensor, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                    clip: float = 0.05) -> torch.Tensor:
    """The asymmetric loss (see the module docstring), summed over classes and averaged over the
    batch. `target` is multi-hot (0/1); gradients flow through the focal factors too, as the
    loss is written."""
    if gamma_pos < 0 or gamma_neg < 0 or not 0 <= clip < 1:
        raise ValueError(f"asymmetric loss needs gamma_pos, gamma_neg >= 0 and 0 <= clip < 1, "
                         f"got {gamma_pos}, {gamma_neg}, {clip}")
    with torch.autocast(logits.device.type, enabled=False):
        x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # float64 stays
        y = target.to(x.dtype)
        log_p = nn.functional.logsigmoid(x)  # log p
        log_q = nn.functional.logsigmoid(-x)  # log (1 - p)
        if clip > 0:  # 1 - p_m = min(1 - p + clip, 1): a negative scored below clip costs nothing
            q_m = torch.clamp(torch.exp(log_q) + clip, max=1.0)
            log_q_m = torch.log(q_m)
        else:
            q_m, log_q_m = None, log_q
        pos = log_p if gamma_pos == 0 else torch.exp(gamma_pos * log_q) * log_p  # (1 - p)^g+ log p
        if gamma_neg == 0:
            neg = log_q_m
        else:
            p_m = 1.0 - q_m if q_m is not None else torch.exp(log_p)  # max(p - clip, 0)
            neg = torch.pow(p_m, gamma_neg) * log_q_m
        loss = -(y * pos + (1.0 - y) * neg)
        return loss.sum() / len(x)


def training_loss(logits: torch.Tensor, target: torch.Tensor, cfg: dict) -> torch.Tensor:
    """The loss an MLP config asks for: `cfg["loss"]` "bce" (the default, and what a config
    without the key means) or "asl" with `asl_gamma_pos`, `asl_gamma_neg`, `asl_clip`."""
    kind = cfg.get("loss", "bce")
    if kind == "bce":
        return sigmoid_cross_entropy(logits, target)
    if kind == "asl":
        return asymmetric_loss(logits, target, gamma_pos=cfg["asl_gamma_pos"], gamma_neg=cfg["asl_gamma_neg"],
                               clip=cfg["asl_clip"])
    raise ValueError(f"unknown loss {kind!r}: choose one of {', '.join(LOSSES)}")
