"""The search space's entries: a float or int range, a list of choices, or a fixed value.

Also the strict base every config model shares (``extra="forbid"``, frozen, strict types).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class _Strict(BaseModel):
    # No .inf / .nan anywhere: YAML reads them as floats, and a range up to .inf or a weight
    # decay of .inf passes every bound check, then fails (or trains garbage) inside a trial.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class FloatRange(_Strict):
    """A float searched between ``low`` and ``high`` (log-uniform when ``log``)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntRange(_Strict):
    """An integer searched between ``low`` and ``high`` inclusive."""

    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(gt=0)] = 1
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log and step other than 1 cannot be combined")
        return self


Scalar = bool | int | float | str


class Categorical(_Strict):
    """One of a list of values."""

    type: Literal["categorical"]
    choices: Annotated[list[Scalar], Field(min_length=1)]


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0, got {low}")


Distribution = Annotated[FloatRange | IntRange | Categorical, Field(discriminator="type")]


def _entry_kind(value: Any) -> str:
    return "range" if isinstance(value, (dict, BaseModel)) else "fixed"


# A search-space entry is either a distribution (a mapping with `type`) or a fixed value.
SpaceEntry = Annotated[
    Annotated[Distribution, Tag("range")] | Annotated[Scalar, Tag("fixed")],
    Discriminator(_entry_kind),
]


def values_of(entry: SpaceEntry) -> list[Any]:
    """The values an entry can produce that bound it: its choices, its two ends, or the fixed value."""
    if isinstance(entry, Categorical):
        return list(entry.choices)
    if isinstance(entry, (FloatRange, IntRange)):
        return [entry.low, entry.high]
    return [entry]
