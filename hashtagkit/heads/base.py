"""The protocol every head follows, shaped like scikit-learn's estimator contract.

`fit(X, Y) -> self`, `predict_proba(X) -> (n, C)` scores (higher is better), `save(dir)` and
`Head.load(dir)`. Constructor arguments are the hyper-parameters and nothing else; learned
state ends in `_` (`n_features_in_` and `classes_` = np.arange(C), as scikit-learn names
them), so `sklearn.base.clone` works on a head. The harness only ever calls `predict_proba`
and ranks, so a head is free in how it scores as long as the order is meaningful.

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
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hashtagkit.errors import InputError
from hashtagkit.heads.blocks import EQUAL, Block, BlockCombiner, parse_block_weights

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


class NotFittedError(RuntimeError):
    pass


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


def nonfinite_rows(A: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Indices of rows holding NaN or inf, checked in row batches (a float16 feature matrix
    is never expanded whole into a boolean copy)."""
    if not np.issubdtype(A.dtype, np.floating) and not np.issubdtype(A.dtype, np.complexfloating):
        return np.zeros(0, dtype=np.int64)
    bad = [start + np.flatnonzero(~np.isfinite(A[start : start + batch]).all(axis=1))
           for start in range(0, len(A), batch)]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def refuse_nonfinite_features(store_path, rows: np.ndarray, X: np.ndarray) -> np.ndarray:
    """X, or the one-line error naming the store rows (`rows[i]` is X[i]'s row) whose features
    hold NaN or inf: what training, evaluation and a TrainingData's block reads all say."""
    bad = nonfinite_rows(X)  # in row batches: no N x D boolean copy
    if len(bad):
        named = ", ".join(str(r) for r in np.asarray(rows)[bad][:10].tolist())
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise InputError(f"store {store_path}: rows {named}{more} have non-finite features (NaN/inf); "
                         "re-extract them (e.g. with --precision fp32) or drop them")
    return X


def _check_finite(A: np.ndarray, what: str) -> None:
    rows = nonfinite_rows(A)
    if len(rows):
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"{what} has NaN or inf in {len(rows)} row(s): {shown}")


class Head:
    """Base class: parameter handling, checks and numpy-state persistence.

    A subclass sets `name`, implements `fit` and `predict_proba`, and lists its learned
    arrays in `state_attrs` (saved to an .npz); heads whose state is not a few arrays
    override `_save_state` / `_load_state`.
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

    # --- checks shared by every head ------------------------------------------------------
    def _check_xy(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parameters, shapes and finiteness, before any work: a NaN in X or Y would
        otherwise train a model that scores NaN, or a kNN index that answers nonsense."""
        self._validate_params()
        X, Y = np.asarray(X), np.asarray(Y)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise ValueError(f"fit needs X (n, d) and Y (n, C) with the same n, got {X.shape} and {Y.shape}")
        if len(X) == 0:
            raise ValueError("fit needs at least one training row")
        _check_finite(X, "X")
        _check_finite(Y, "Y")
        return X, Y

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise NotFittedError(f"head {self.name!r} is not fitted: call fit first")

    def _check_x(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-d, got shape {X.shape}")
        if self.needs_features and X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the head was fitted on {self.n_features_in_}")
        _check_finite(X, "X")
        return X

    # --- the protocol -----------------------------------------------------------------------
    def fit(self, X: np.ndarray, Y: np.ndarray, blocks: Sequence[Block] = ()) -> Head:
        """Fit on in-memory arrays: checked whole here, then `fit_data` on them. `blocks` names
        the backbones' column ranges in X (`hashtagkit.heads.blocks.layout_of(store.blocks,
        view)`), which a head that compares rows joins by its rule; none: X is one block."""
        from hashtagkit.heads.data import ArrayData

        X, Y = self._check_xy(X, Y)
        return self.fit_data(ArrayData(X, Y, layout=tuple(blocks)))

    def fit_data(self, data) -> Head:
        """Fit on a `hashtagkit.heads.data.TrainingData` (a store's rows, read block by block,
        or arrays): the one fitting path of a head, so `fit` on arrays and `hashtagkit fit` on a
        store train alike. The rows are checked for NaN/inf as they are read."""
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
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

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
