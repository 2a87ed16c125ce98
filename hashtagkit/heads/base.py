"""The protocol every head follows, shaped like scikit-learn's estimator contract.

`fit(X, Y) -> self`, `predict_proba(X) -> (n, C)` scores (higher is better), `save(dir)` and
`Head.load(dir)`. Constructor arguments are the hyper-parameters and nothing else; learned
state ends in `_`. The harness only ever calls `predict_proba` and ranks, so a head is free
in how it scores as long as the order is meaningful.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hashtagkit.errors import InputError

HEAD_FILE = "head.json"
STATE_FILE = "state.npz"


class NotFittedError(RuntimeError):
    pass


class Head:
    """Base class: parameter handling, checks and numpy-state persistence.

    A subclass sets `name`, implements `fit` and `predict_proba`, and lists its learned
    arrays in `state_attrs` (saved to an .npz); heads whose state is not a few arrays
    override `_save_state` / `_load_state`.
    """

    name: ClassVar[str] = ""
    needs_features: ClassVar[bool] = True
    state_attrs: ClassVar[tuple[str, ...]] = ()

    # --- parameters (scikit-learn style) ------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.param_names()}

    def set_params(self, **params: Any) -> Head:
        unknown = set(params) - set(self.param_names())
        if unknown:
            raise InputError(
                f"head {self.name!r} has no parameter {sorted(unknown)[0]!r}; "
                f"it takes: {', '.join(self.param_names()) or 'none'}"
            )
        for k, v in params.items():
            setattr(self, k, v)
        return self

    # --- checks shared by every head ------------------------------------------------------
    @staticmethod
    def _check_xy(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X, Y = np.asarray(X), np.asarray(Y)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise ValueError(f"fit needs X (n, d) and Y (n, C) with the same n, got {X.shape} and {Y.shape}")
        if len(X) == 0:
            raise ValueError("fit needs at least one training row")
        return X, Y

    def _check_fitted(self) -> None:
        if not getattr(self, "n_classes_", None):
            raise NotFittedError(f"head {self.name!r} is not fitted: call fit first")

    def _check_x(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-d, got shape {X.shape}")
        if self.needs_features and X.shape[1] != self.n_features_:
            raise ValueError(f"X has {X.shape[1]} features, the head was fitted on {self.n_features_}")
        return X

    # --- the protocol -----------------------------------------------------------------------
    def fit(self, X: np.ndarray, Y: np.ndarray) -> Head:
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"head": self.name, "params": self.get_params(),
                "n_classes_": int(self.n_classes_), "n_features_": int(self.n_features_)}
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
        head.n_classes_, head.n_features_ = meta["n_classes_"], meta["n_features_"]
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
