"""The protocol every head follows, without scikit-learn: parameters, fitting from a
`TrainingData`, persistence.

Constructor arguments are the hyper-parameters and nothing else; learned state ends in `_`
(`n_features_in_` and `classes_`, as scikit-learn names them). `fit_data(data)` trains from a
`hashtagkit.heads.data.TrainingData` (a store's rows, block by block: the one fitting path),
`predict_proba(X) -> (n, C)` scores (higher is better), `save(dir)` and `Head.load(dir)`. The
harness only ever calls `predict_proba` and ranks, so a head is free in how it scores as long as
the order is meaningful.

Every registered head is also a scikit-learn estimator (`hashtagkit.heads.estimator.HeadEstimator`:
`fit(X, Y)` on arrays, `predict`, `score`, tags). That part lives in its own module because it
imports scikit-learn (about a second): this one, and so `from hashtagkit.heads import Head` in
`hashtagkit recommend`, does not.

Each head declares its parameters' types and ranges once, in `param_spec` (scikit-learn's
`_parameter_constraints` idea): `make_head` checks them when a head is made from the CLI's
`--set` values, `fit` checks them again, and `fit --help` lists them from the same place.
Integer parameters take Python ints only: `True` (bool is an int subclass in Python) and a
whole float such as 3.0 are refused, as scikit-learn's `Integral` constraint refuses them,
so a saved run records exactly the type it was trained with.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hashtagkit.errors import InputError
from hashtagkit.heads.blocks import EQUAL, BlockCombiner, parse_block_weights
from hashtagkit.heads.checks import refuse_nonfinite_features  # noqa: F401 (runs, evaluation import it from here)

# the target type of a head trained on an (n, C) 0/1 indicator matrix (scikit-learn's name); a head
# fitted on 1-d labels is "binary" or "multiclass" (hashtagkit.heads.estimator)
MULTILABEL = "multilabel-indicator"

HEAD_FILE = "head.json"
STATE_FILE = "state.npz"


class Laps:
    """Seconds spent in each phase of a fit, for `fit_report()["seconds"]`: at a million rows a
    user needs to know whether the time went to reading the store, to a sample or to compute."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Close `phase`: the time since the previous lap (or since the start) is its own."""
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


class InvalidParameterError(InputError, ValueError):
    """A hyper-parameter the head does not have, or a value outside what it allows.

    A ValueError for library callers (as scikit-learn raises), and an InputError so the CLI
    shows it as its one-line `Error: ...` with exit 2."""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _shown(value: Any) -> str:
    """A default as one would type it after `--set key=`."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Param:
    """What one hyper-parameter admits: `kind` int, float or str; an optional range (`low`,
    `high`, each closed unless `low_open`/`high_open`); `choices` for a str; `none` if null
    is allowed (it then means the default named in `none_means`); `exclude` for lone
    forbidden values (n_jobs=0)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    none: bool = False
    none_means: str = ""
    exclude: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind is str:
            text = "one of " + ", ".join(self.choices)
        else:
            text = "an integer" if self.kind is int else "a number"
            if self.low is not None and self.high is not None:
                text += f" in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {_num(self.low)}"
            elif self.high is not None:
                text += f" {'<' if self.high_open else '<='} {_num(self.high)}"
            if self.exclude:
                text += " other than " + ", ".join(map(str, self.exclude))
        if self.none:
            text += " or null" + (f" ({self.none_means})" if self.none_means else "")
        return text

    def admits(self, value: Any) -> bool:
        if value is None:
            return self.none
        if self.kind is str:
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        try:  # NaN, inf and integers too large for a float (10**400) are never a setting
            if not math.isfinite(float(value)) or value in self.exclude:
                return False
        except OverflowError:
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


@dataclass(frozen=True)
class BlockWeights(Param):
    """`equal` or NAME:WEIGHT per block of the view (`hashtagkit.heads.blocks`)."""

    def describe(self) -> str:
        return "equal, or NAME:WEIGHT for each block of the view (object:2,scene:1), weights >= 0"

    def admits(self, value: Any) -> bool:
        return parse_block_weights(value) is not None


BLOCK_WEIGHTS = EQUAL  # the default of a `block_weights` parameter


def available_memory() -> int:
    """Bytes this machine can still give (MemAvailable; the physical memory where that is not
    known): what a parameter's cost is checked against before the work starts."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_memory(head: str, setting: str, nbytes: float, what: str) -> None:
    """An InvalidParameterError naming the setting, the size and the limit, when `what` would need
    more memory than is available: refused before the work, not ended by the OOM killer later."""
    limit = available_memory()
    if nbytes > limit:
        raise InvalidParameterError(f"{head} parameter {setting} needs {nbytes / 2**30:,.1f} GiB for {what}, "
                                    f"more than the {limit / 2**30:,.1f} GiB of memory available; choose a smaller value")


class Head:
    """Base class: parameter handling, fitted shape and numpy-state persistence.

    A head subclasses `hashtagkit.heads.estimator.HeadEstimator` (this class and scikit-learn's),
    sets `name`, implements `fit_data` and `_predict_scores`, and lists its learned arrays in
    `state_attrs` (saved to an .npz); heads whose state is not a few arrays override
    `_save_state` / `_load_state`.
    """

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = True
    state_attrs: ClassVar[tuple[str, ...]] = ()
    param_spec: ClassVar[dict[str, Param]] = {}
    # how this head joins a view's feature blocks ('l2', 'std'; None: it takes the columns as
    # they come, e.g. the MLP, which standardises every column); such a head has `block_weights`
    block_rule: ClassVar[str | None] = None

    # --- parameters (scikit-learn style) ------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {p: sig.parameters[p].default for p in cls.param_names()}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments as set (`deep` is accepted for scikit-learn: a head has
        no nested estimators)."""
        return {p: getattr(self, p) for p in self.param_names()}

    def set_params(self, **params: Any) -> Head:
        """Set hyper-parameters by name; an unknown name raises InvalidParameterError (a
        ValueError). Values are checked by `_validate_params` (make_head and fit call it)."""
        unknown = set(params) - set(self.param_names())
        if unknown:
            raise InvalidParameterError(
                f"head {self.name!r} has no parameter {sorted(unknown)[0]!r}; "
                f"it takes: {', '.join(self.param_names()) or 'none'}"
            )
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def _validate_params(self) -> None:
        """Every parameter against `param_spec`; the first bad one is named with what it admits."""
        for key, value in self.get_params().items():
            spec = self.param_spec[key]
            if not spec.admits(value):
                raise InvalidParameterError(f"{self.name} parameter {key} must be {spec.describe()}, got {value!r}")

    @classmethod
    def describe_params(cls) -> list[str]:
        """One line per parameter, `name=default  what it admits`, for `fit --help`."""
        defaults = cls.param_defaults()
        return [f"{key}={_shown(defaults[key])}  {cls.param_spec[key].describe()}" for key in cls.param_names()]

    # --- fitted shape (scikit-learn's names; the old ones stay readable) -----------------------
    def _begin_fit(self, data) -> None:
        """What every `fit_data` does first: check the parameters and that there is a row to
        fit, and take the fitted shape from the TrainingData."""
        self._validate_params()
        if data.n_rows == 0:
            raise ValueError("fit needs at least one training row")
        self.n_features_in_ = int(data.n_features)
        self.classes_ = np.arange(data.n_classes)
        self.target_type_ = MULTILABEL  # `fit` on 1-d labels says otherwise once this fit is done
        self.__dict__.pop("feature_names_in_", None)  # a previous fit's column names (`fit` sets its own)

    def _fit_blocks(self, data, sample: np.ndarray | None = None) -> None:
        """The join of `data.layout`'s blocks by `block_rule` (None for one block), as `blocks_`;
        the `std` rule measures the blocks on `sample` (training rows)."""
        try:
            self.blocks_ = BlockCombiner.fit(self.block_rule, data.layout, self.block_weights, sample)
        except ValueError as e:
            raise InvalidParameterError(f"{self.name} parameter {e}") from None

    def _combine(self, X: np.ndarray) -> np.ndarray:
        """X with its blocks joined as fitted (float32), or X itself when there is nothing to join
        (one block, or a head saved before blocks were joined: it scores as it was trained)."""
        combiner = getattr(self, "blocks_", None)
        return X if combiner is None else combiner.transform(X)

    @property
    def n_classes_(self) -> int:
        return len(self.classes_)

    @property
    def n_features_(self) -> int:
        return self.n_features_in_

    def _check_fitted(self) -> None:
        """scikit-learn's NotFittedError, naming the head, unless it has been fitted (or loaded)."""
        from sklearn.utils.validation import check_is_fitted  # a head that exists has imported it already

        check_is_fitted(self, msg=f"head {self.name!r} is not fitted: call fit first")

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "classes_")

    # --- the protocol -----------------------------------------------------------------------
    def fit_data(self, data) -> Head:
        """Fit on a `hashtagkit.heads.data.TrainingData` (a store's rows, read block by block,
        or arrays): the one fitting path of a head, so `fit` on arrays and `hashtagkit fit` on a
        store train alike. The rows are checked for NaN/inf as they are read."""
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, C) scores, higher is better: what the harness ranks (`HeadEstimator` implements it)."""
        raise NotImplementedError

    def fit_report(self) -> dict[str, Any]:
        """What fitting decided and measured that a reader of the run should see (run.json's
        `fit_report`): e.g. the index kNN chose and its recall, whether the MLP streamed. A head
        that measures something keeps it in `report_`."""
        report = dict(getattr(self, "report_", {}))
        if getattr(self, "blocks_", None) is not None:
            report["feature_blocks"] = self.blocks_.to_dict()
        return report

    def save(self, directory: str | Path) -> None:
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"head": self.name, "params": self.get_params(),
                "n_classes_": int(self.n_classes_), "n_features_": int(self.n_features_)}
        if getattr(self, "target_type_", MULTILABEL) != MULTILABEL:  # fitted on 1-d labels: keep them
            meta["target_type"], meta["classes"] = self.target_type_, self.classes_.tolist()
        if getattr(self, "blocks_", None) is not None:
            meta["blocks"] = self.blocks_.to_dict()
        (directory / HEAD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self._save_state(directory)

    @classmethod
    def load(cls, directory: str | Path) -> Head:
        from hashtagkit.heads import HEADS  # the registry knows every head class

        directory = Path(directory)
        meta_path = directory / HEAD_FILE
        if not meta_path.is_file():
            raise InputError(f"{directory} holds no saved head ({HEAD_FILE} missing)")
        meta = json.loads(meta_path.read_text())
        klass = HEADS.get(meta["head"])
        if klass is None:
            raise InputError(f"{directory}: unknown head {meta['head']!r} (saved by a newer hashtagkit?)")
        if cls is not Head and klass is not cls:
            raise InputError(f"{directory} holds a {meta['head']!r} head, not {cls.name!r}")
        head = klass(**meta["params"])
        head.n_features_in_, head.classes_ = int(meta["n_features_"]), np.arange(int(meta["n_classes_"]))
        head.target_type_ = meta.get("target_type", MULTILABEL)
        if "classes" in meta:
            head.classes_ = np.asarray(meta["classes"])
        # saved before blocks were joined (no "blocks"): the raw columns, as it was trained
        head.blocks_ = BlockCombiner.from_dict(meta["blocks"]) if "blocks" in meta else None
        head._load_state(directory)
        return head

    def _save_state(self, directory: Path) -> None:
        np.savez(directory / STATE_FILE, **{a: getattr(self, a) for a in self.state_attrs})

    def _load_state(self, directory: Path) -> None:
        with np.load(directory / STATE_FILE, allow_pickle=False) as data:
            for a in self.state_attrs:
                setattr(self, a, data[a])
