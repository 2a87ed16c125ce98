"""Fusion: a weighted sum of other heads' scores, the weights chosen on held-out training rows.

The MLP and kNN err differently (a learned boundary against label transfer from look-alikes), so
a blend can beat both; whether it does is a measurement (benchmarks/results/beyond/). Three
decisions, and why:

- **Comparable scores** (`normalise`): the MLP's scores are per-tag sigmoids, kNN's are vote
  shares summing to 1, TagProp's are sigmoids again; their scales differ per image and per head,
  so a raw sum would let one head win by scale alone. Each component's scores are rescaled per
  image before weighting: `minmax` (the default) maps an image's lowest score to 0 and its highest
  to 1, keeping how far apart the tags are (a confident head's clear winner stays clear; the
  classic CombSUM normalisation of score fusion); `rank` replaces scores by their rank among
  the image's tags (average rank for ties, divided by C): blind to confidence, robust to
  skewed scales. Both are increasing per image, so one component with weight 1 ranks every
  image exactly as that component does (tests/heads/test_fusion.py checks it): every per-image
  metric (P/R/A@K, per-image mAP) is the component's. Per-class mAP ranks *images* by one tag's
  score, which a per-image rescaling changes, so it can differ. Fused scores are float64: a
  float32 cast could merge two close scores into a tie the component did not have.
- **Weights on training rows only**: a seeded validation part of the training rows
  (`val_fraction`, at most VAL_ROWS rows, as the MLP holds out), made of whole blocks with
  `TrainingData.subset`, so a store's part is read as chunks like any training data. Each
  component is fitted on the other training rows, the validation rows are scored, and every
  weight vector on a grid of step `grid_step` over the simplex is tried; the best by `metric`
  (Recall@5 by default, what the MLP's early stopping watches; validation rows without a tag
  are left out, as evaluation leaves them out) wins, ties to the first in grid order. The test
  split is never read. Data with fewer than MIN_BLOCKS blocks (small: at most that many store
  chunks) are re-cut into MIN_BLOCKS in-memory blocks first, so the part can be ~val_fraction.
- **Final components** (`final_fit`): `all` (default) fits each component again on every
  training row once the weights are chosen, so the saved components saw all the data, like the
  heads beside them in a table (the price: each component is fitted twice); `part` keeps the
  components fitted on the rest of the training rows (each fitted once, half the time; they
  lack the validation part's rows). Weights set explicitly (`weights=0.7,0.3`) or a single
  component skip the validation part: the components are fitted once, on all rows.

Components are saved inside the head's directory (`components/<i>-<name>/`, each a head that
`Head.load` restores) and their parameters are `component_params` (a JSON object,
`{"mlp": {"hidden": 1024}}`), or one at a time as `--set mlp.hidden=1024`; a component with a
`random_state` gets the fusion's unless its own is given. Everything the fit chose is in
`fit_report()`: the weights, the validation rows, each component's validation score alone and the
fused one, and each component's own report.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from hashtagkit import metrics
from hashtagkit.heads.base import Head, InvalidParameterError, Param
from hashtagkit.heads.data import VAL_ROWS, ArrayData, TrainingData
from hashtagkit.heads.estimator import HeadEstimator

MIN_BLOCKS = 20  # fewer blocks than this: re-cut in memory, so the validation part is not one coarse block
FUSION_FILE, COMPONENTS_DIR = "fusion.json", "components"
METRICS = {"recall@5": metrics.recall_at_k, "precision@1": metrics.precision_at_k, "accuracy@5": metrics.accuracy_at_k}


def _head_names() -> tuple[str, ...]:
    from hashtagkit.heads import HEADS  # the registry imports this module

    return tuple(name for name in HEADS if name != FusionHead.name)


def parse_components(value: Any) -> list[str] | None:
    """'mlp,knn' -> ['mlp', 'knn']; None when the text is not a list of distinct known heads."""
    if not isinstance(value, str):
        return None
    names = [part.strip() for part in value.split(",")]
    known = _head_names()
    if not names or any(n not in known for n in names) or len(set(names)) != len(names):
        return None
    return names


def parse_weights(value: Any) -> list[float] | None:
    """'0.7,0.3' -> [0.7, 0.3]: finite, non-negative, summing above 0; None otherwise."""
    if not isinstance(value, str):
        return None
    try:
        weights = [float(part) for part in value.split(",")]
    except ValueError:
        return None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        return None
    return weights


@dataclass(frozen=True)
class Components(Param):
    """A comma-separated list of distinct registered heads (not fusion itself)."""

    def describe(self) -> str:
        return "comma-separated distinct heads from " + ", ".join(_head_names())

    def admits(self, value: Any) -> bool:
        return parse_components(value) is not None


@dataclass(frozen=True)
class Weights(Param):
    """`auto` (chosen on the validation part) or one non-negative number per component."""

    def describe(self) -> str:
        return "auto (chosen on a validation part of the training rows) or comma-separated weights >= 0, one per component"

    def admits(self, value: Any) -> bool:
        return value == "auto" or parse_weights(value) is not None


@dataclass(frozen=True)
class ComponentParams(Param):
    """A JSON object {head: {parameter: value}} (null: every component at its defaults)."""

    def describe(self) -> str:
        return 'a JSON object {"HEAD": {"KEY": VALUE}} or null (defaults); or --set HEAD.KEY=VALUE'

    def admits(self, value: Any) -> bool:
        return value is None or (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, dict)
                                                                 for k, v in value.items()))


def normalise(scores: np.ndarray, how: str) -> np.ndarray:
    """Scores rescaled per image (row), increasing in the score, as float64: `minmax` to [0, 1]
    (a row of equal scores becomes 0), `rank` to average rank / C."""
    s = np.asarray(scores, dtype=np.float64)
    if how == "rank":
        from scipy.stats import rankdata

        return rankdata(s, axis=1, method="average") / s.shape[1]
    low, high = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
    span = high - low
    return np.divide(s - low, span, out=np.zeros_like(s), where=span > 0)


MAX_GRID_POINTS = 1_000_000  # each point is a metric over the validation rows: ~10 ms at 10,000 x 997


def grid_points(n: int, step: float) -> int:
    """How many weight vectors `weight_grid(n, step)` holds: C(m + n - 1, n - 1), m = round(1/step)."""
    inv = 1 / step
    m = max(1, round(inv)) if math.isfinite(inv) else 10**308
    return math.comb(m + n - 1, n - 1)


def _count(points: int) -> str:
    return f"{points:,}" if points < 10**15 else f"about 10^{len(str(points)) - 1}"


def weight_grid(n: int, step: float) -> np.ndarray:
    """Every weight vector of n non-negative multiples of 1/round(1/step) summing to 1 (stars and
    bars), as rows; the equal split of two components is among them at the default step."""
    m = max(1, round(1 / step))
    rows = []
    for bars in combinations(range(m + n - 1), n - 1):
        edges = (-1, *bars, m + n - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n)])
    return np.asarray(rows, dtype=np.float64) / m


class FusionHead(HeadEstimator):
    name = "fusion"
    param_spec = {
        "components": Components(str),
        "weights": Weights(str),
        "normalise": Param(str, choices=("minmax", "rank")),
        "metric": Param(str, choices=tuple(METRICS)),
        "grid_step": Param(float, low=0, high=1, low_open=True),
        "val_fraction": Param(float, low=0, high=1, low_open=True, high_open=True),
        "final_fit": Param(str, choices=("all", "part")),
        "component_params": ComponentParams(dict, none=True, none_means="every component at its defaults"),
        "random_state": Param(int, low=0, high=2**32 - 1),
    }

    def __init__(self, components: str = "mlp,knn", weights: str = "auto", normalise: str = "minmax",
                 metric: str = "recall@5", grid_step: float = 0.1, val_fraction: float = 0.1, final_fit: str = "all",
                 component_params: dict | None = None, random_state: int = 0) -> None:
        self.components = components
        self.weights = weights
        self.normalise = normalise
        self.metric = metric
        self.grid_step = grid_step
        self.val_fraction = val_fraction
        self.final_fit = final_fit
        self.component_params = component_params
        self.random_state = random_state

    # --- parameters: HEAD.KEY goes to that component -------------------------------------------
    def set_params(self, **params: Any) -> FusionHead:
        """As every head, plus `HEAD.KEY=VALUE` (a component's parameter, as `fit --set mlp.hidden=1024`
        gives it): merged into a new `component_params`."""
        nested = {k: v for k, v in params.items() if "." in k}
        super().set_params(**{k: v for k, v in params.items() if k not in nested})
        if nested:
            merged = {h: dict(kv) for h, kv in (self.component_params or {}).items()}
            for key, value in nested.items():
                head, _, name = key.partition(".")
                if head not in _head_names() or not name:
                    raise InvalidParameterError(f"head 'fusion' has no parameter {key!r}; a component's is HEAD.KEY "
                                                f"with HEAD one of {', '.join(_head_names())}")
                merged.setdefault(head, {})[name] = value
            self.component_params = merged
        return self

    def _validate_params(self) -> None:
        """Each parameter against its declaration, then what depends on several: one weight per
        component, component parameters only for components, each valid for its head."""
        super()._validate_params()
        names = parse_components(self.components)
        if self.weights != "auto" and len(parse_weights(self.weights)) != len(names):
            raise InvalidParameterError(f"fusion parameter weights must be one weight per component "
                                        f"({len(names)}: {', '.join(names)}), got {self.weights!r}")
        points = grid_points(len(names), self.grid_step)
        if self.weights == "auto" and len(names) > 1 and points > MAX_GRID_POINTS:
            raise InvalidParameterError(f"fusion parameter grid_step={self.grid_step:g} gives {_count(points)} weight vectors "
                                        f"for {len(names)} components, more than {MAX_GRID_POINTS:,} (each is scored "
                                        "on the validation rows); choose a larger grid_step")
        for head, kv in (self.component_params or {}).items():
            if head not in names:
                raise InvalidParameterError(f"fusion parameter component_params must be for the components only "
                                            f"({', '.join(names)}), got {head!r}")
            try:
                self._component(head, kv)
            except InvalidParameterError as e:
                raise InvalidParameterError(f"fusion parameter component_params must be valid for {head}: {e}") from None

    def _component(self, name: str, params: dict | None = None) -> Head:
        from hashtagkit.heads import make_head

        params = dict((self.component_params or {}).get(name, {}) if params is None else params)
        head = make_head(name, **params)
        if "random_state" in head.param_names() and "random_state" not in params:
            head.set_params(random_state=self.random_state)
        return head

    # --- fitting ------------------------------------------------------------------------------
    def _split(self, data: TrainingData) -> tuple[TrainingData, TrainingData, TrainingData]:
        """(data, fit part, validation part): the validation part is seeded whole blocks holding
        val_fraction of the rows (at most VAL_ROWS, at least one row, never every block)."""
        if data.n_blocks < MIN_BLOCKS:
            data = ArrayData(*data.to_arrays(), block_rows=math.ceil(data.n_rows / MIN_BLOCKS), layout=data.layout)
        val = data.held_out_blocks(self.val_fraction, VAL_ROWS, np.random.default_rng([self.random_state, 2]))
        return data, data.subset(np.setdiff1d(np.arange(data.n_blocks), val)), data.subset(val)

    def _choose_weights(self, fitted: list[Head], val: TrainingData) -> tuple[np.ndarray, dict]:
        """Score the validation part with every component (normalised, float32: n_val x C each),
        then the grid's best weight vector by `metric` over the tagged validation rows."""
        scores = [np.empty((val.n_rows, self.n_classes_), np.float32) for _ in fitted]
        labels = np.empty((val.n_rows, self.n_classes_), np.uint8)
        at = 0
        for X, Y in val.blocks():
            for out, head in zip(scores, fitted, strict=True):
                out[at : at + len(X)] = normalise(head.predict_proba(X), self.normalise)
            labels[at : at + len(X)] = Y != 0
            at += len(X)
        tagged = np.flatnonzero(labels.any(axis=1))
        names = [h.name for h in fitted]
        info = {"validation_rows": int(val.n_rows), "validation_blocks": int(val.n_blocks),
                "validation_untagged": int(val.n_rows - len(tagged))}
        if not len(tagged):  # nothing to judge by: equal weights, said so
            return np.full(len(fitted), 1 / len(fitted)), {**info, "chosen_by": "equal: no tagged validation row"}
        score = METRICS[self.metric]
        k = int(self.metric.partition("@")[2])
        S, Yv = [s[tagged] for s in scores], labels[tagged]
        grid = weight_grid(len(fitted), self.grid_step)
        from tqdm import tqdm

        values = [score(sum(w * s for w, s in zip(ws, S, strict=True) if w), Yv, k)
                  for ws in tqdm(grid, desc="fusion weights", unit="point", disable=None, leave=False)]
        best = int(np.argmax(values))
        alone = {n: round(float(score(s, Yv, k)), 6) for n, s in zip(names, S, strict=True)}
        return grid[best], {**info, "chosen_by": f"{self.metric} on the tagged validation rows", "grid_points": len(grid),
                            f"val_{self.metric}_alone": alone, f"val_{self.metric}_fused": round(float(values[best]), 6)}

    def fit_data(self, data: TrainingData) -> FusionHead:
        """Weights from the validation part (unless given, or a single component), then the final
        components (see the module's docstring for which rows each saw)."""
        self._begin_fit(data)
        names = parse_components(self.components)
        report: dict[str, Any] = {"components": names, "normalise": self.normalise}
        t0 = time.perf_counter()
        fitted = None
        if self.weights != "auto":
            weights = np.asarray(parse_weights(self.weights)) / sum(parse_weights(self.weights))
            report["chosen_by"] = "given (weights parameter)"
        elif len(names) == 1:
            weights = np.ones(1)
            report["chosen_by"] = "a single component"
        else:
            whole, part, val = self._split(data)
            fitted = [self._component(n).fit_data(part) for n in names]
            weights, info = self._choose_weights(fitted, val)
            report.update(info)
            report.update({"final_fit": self.final_fit, "fit_part_rows": int(part.n_rows),
                           "tune_seconds": round(time.perf_counter() - t0, 3)})
            if self.final_fit == "part":
                report["component_rows"] = int(part.n_rows)
            else:
                fitted = None
        if fitted is None:
            fitted = [self._component(n).fit_data(data) for n in names]
            report["component_rows"] = int(data.n_rows)
        self.components_, self.weights_ = fitted, np.asarray(weights, dtype=np.float64)
        report["weights"] = {n: round(float(w), 6) for n, w in zip(names, self.weights_, strict=True)}
        report["component_reports"] = {h.name: h.fit_report() for h in fitted}
        self.report_ = report
        return self

    # --- scoring ------------------------------------------------------------------------------
    def _predict_scores(self, X: np.ndarray) -> np.ndarray:
        """sum_i w_i normalise(component_i(X)), float64 (components with weight 0 are not run): in
        [0, 1], for ranking; not a probability."""
        out = np.zeros((len(X), self.n_classes_), dtype=np.float64)
        for w, head in zip(self.weights_, self.components_, strict=True):
            if w:
                out += w * normalise(head.predict_proba(X), self.normalise)
        return out

    def _recommend(self, X: np.ndarray) -> np.ndarray:
        """A hashtag is recommended when the components recommending it (each by its own rule)
        hold more than half of the weight: the fused scores are normalised per image (the top tag
        always 1 under minmax, half the tags above 0.5 under rank), so no threshold on them means
        'recommend'; a single weighted component's `predict` is the fusion's."""
        votes = np.zeros((len(X), self.n_classes_), dtype=np.float64)
        for w, head in zip(self.weights_, self.components_, strict=True):
            if w:
                votes += w * head.predict(X)
        return (votes > 0.5 * self.weights_.sum()).astype(np.int64)

    # --- persistence --------------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        subdirs = []
        for i, head in enumerate(self.components_):
            sub = f"{COMPONENTS_DIR}/{i}-{head.name}"
            head.save(directory / sub)
            subdirs.append(sub)
        state = {"components": subdirs, "weights": self.weights_.tolist(), "report": self.report_}
        (directory / FUSION_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _load_state(self, directory: Path) -> None:
        state = json.loads((directory / FUSION_FILE).read_text())
        self.components_ = [Head.load(directory / sub) for sub in state["components"]]
        self.weights_ = np.asarray(state["weights"], dtype=np.float64)
        self.report_ = state["report"]
