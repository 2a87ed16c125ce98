"""Typed records written as JSON objects (a run's `run.json`, a store's `extraction` attribute).

A record is a dataclass read through attributes; `from_json` / `to_json` round-trip the JSON
exactly, including records written by earlier releases (a key they lack stays absent) and by
later ones (a key this release does not know is kept in `extra` and written back).
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="JsonRecord")


@dataclass
class JsonRecord:
    """The base of a typed record (see the module docstring)."""

    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()  # keys written only when they have a value
    extra: dict = field(default_factory=dict, kw_only=True)  # keys this release does not know
    absent: frozenset = field(default=frozenset(), kw_only=True, compare=False, repr=False)  # known keys not there

    @classmethod
    def json_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in ("extra", "absent")]

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        if not isinstance(data, dict):
            raise ValueError(f"a {cls.__name__} is a JSON object, not {type(data).__name__}")
        names = cls.json_names()
        return cls(**{k: data[k] for k in names if k in data},
                   extra={k: v for k, v in data.items() if k not in names},
                   absent=frozenset(k for k in names if k not in data))

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if name in ("extra", "absent"):
                continue
            if name in self.absent and value == _default(f):
                continue  # the JSON did not have it and nothing set it since
            if value is None and name in self.OMIT_WHEN_NONE:
                continue
            out[name] = value
        return out | self.extra


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING
