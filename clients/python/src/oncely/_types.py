"""What calls answer, as Python types."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union, overload

Span = Union[_dt.timedelta, str, int]
"""A duration as the API takes it: a ``timedelta``, a string with a unit (``"250ms"``,
``"30s"``, ``"15m"``, ``"1h"``, ``"7d"``; none means seconds) or whole seconds."""


class Verdict(str, enum.Enum):
    """One ID's answer to ``check_and_mark`` or ``check``; equal to the wire string."""

    NEW = "new"
    """Not seen in the remembered window. From check-and-mark: now marked, process it
    (also when ``replayed``). From check: unseen, nothing was marked."""
    DUPLICATE = "duplicate"
    """An exact table holds it: skip it."""
    PROBABLE_DUPLICATE = "probable_duplicate"
    """Only a Bloom-only generation says it was seen: a duplicate with probability at
    least ``1 - fp_rate``."""
    IN_PROGRESS = "in_progress"
    """Another owner holds a live claim on it (until ``until``)."""

    def __str__(self) -> str:
        return self.value


class ClaimVerdict(str, enum.Enum):
    """A claim's outcome; equal to the wire string."""

    ACQUIRED = "acquired"
    """The caller holds the claim until ``until``: process, then complete or release."""
    IN_PROGRESS = "in_progress"
    """Another owner holds a live claim until ``until``."""
    DUPLICATE = "duplicate"
    """The ID is done."""
    PROBABLE_DUPLICATE = "probable_duplicate"
    """Only a Bloom-only generation says the ID was seen: probably done."""

    def __str__(self) -> str:
        return self.value


def from_ms(ms: int) -> _dt.datetime:
    """Milliseconds since the Unix epoch as a timezone-aware (UTC) datetime."""
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class Result:
    """One ID's verdict."""

    id: str
    verdict: Verdict
    replayed: bool = False
    """``True`` when this ``new`` is the same owner's earlier ``new`` returned again:
    a retry of the same delivery attempt whose first answer was lost. Process it."""
    until: _dt.datetime | None = None
    """For ``in_progress``: when the other owner's lease ends (UTC); else ``None``."""

    @property
    def is_new(self) -> bool:
        """Whether to process the event: ``new``, replayed or not."""
        return self.verdict is Verdict.NEW


class Marked(Sequence[Result]):
    """The answer to ``check_and_mark``: one :class:`Result` per ID, in the order of
    the IDs given, and the ``owner`` token the marks were made with (the caller's, or
    the one drawn for the call). Reuse ``owner`` only to retry the same delivery."""

    __slots__ = ("_results", "owner")

    def __init__(self, owner: str, results: Sequence[Result]) -> None:
        self.owner = owner
        self._results = tuple(results)

    @overload
    def __getitem__(self, index: int) -> Result: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Result]: ...

    def __getitem__(self, index: int | slice) -> Result | Sequence[Result]:
        return self._results[index]

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Marked):
            return self.owner == other.owner and self._results == other._results
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Marked(owner={self.owner!r}, results={list(self._results)!r})"

    @property
    def results(self) -> list[Result]:
        """The results, as a list."""
        return list(self._results)


@dataclasses.dataclass(frozen=True)
class Claim:
    """The answer to ``claim``."""

    id: str
    verdict: ClaimVerdict
    owner: str
    """The owner token the claim was made with (the caller's, or the one drawn)."""
    until: _dt.datetime | None = None
    """For ``acquired`` and ``in_progress``: when the lease ends (UTC)."""
    replayed: bool = False
    """For ``acquired``: the caller already held it (the lease was renewed, or a retry
    found the claim its lost first attempt had taken)."""
    taken_over: bool = False
    """For ``acquired``: another owner's lease had run out uncompleted."""

    @property
    def acquired(self) -> bool:
        """Whether the caller holds the claim: process, then complete or release."""
        return self.verdict is ClaimVerdict.ACQUIRED


_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))
_SPAN = re.compile(r"^0*([1-9][0-9]{0,8})(ms|s|m|h|d)?$")
_PER = {None: 1_000, "s": 1_000, "ms": 1, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_span(value: Any) -> _dt.timedelta:
    """A duration as the daemon writes it (``"1h"``, ``"250ms"``, whole seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int):
        return _dt.timedelta(seconds=value)
    if isinstance(value, str):
        m = _SPAN.match(value)
        if m:
            return _dt.timedelta(milliseconds=int(m.group(1)) * _PER[m.group(2)])
    raise ValueError(f"{value!r} is not a duration like '250ms', '30s', '15m', '1h' or '7d'")


def span_to_wire(value: Span) -> str | int:
    """A duration for the wire: a ``timedelta`` in its shortest exact form (whole
    milliseconds), a string or whole seconds as given (the daemon checks them)."""
    if isinstance(value, _dt.timedelta):
        ms = value // _dt.timedelta(milliseconds=1)
        if ms < 1:
            raise ValueError(f"a duration must be at least 1ms, not {value!r}")
        for unit, per in _UNITS:
            if ms % per == 0:
                return f"{ms // per}{unit}"
        return f"{ms}ms"  # pragma: no cover - "ms" always divides
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"a duration is a timedelta, a string or whole seconds, not {value!r}")
    return value


CONFIG_FIELDS = (
    "generations",
    "generation_capacity",
    "generation_span",
    "fp_rate",
    "exact_generations",
)


@dataclasses.dataclass(frozen=True)
class NamespaceConfig:
    """A namespace's whole configuration. The defaults are the daemon's: 4 generations
    of up to 1,000,000 IDs or 1 hour each, a 1% false-positive target, exact tables
    for the 2 newest generations."""

    generations: int = 4
    """Generations in the ring, the open one included (1 to 1024)."""
    generation_capacity: int = 1_000_000
    """New IDs after which the open generation seals."""
    generation_span: _dt.timedelta = _dt.timedelta(hours=1)
    """Time after which the open generation seals (whole milliseconds)."""
    fp_rate: float = 0.01
    """Target false-positive rate of a check across all live generations."""
    exact_generations: int = 2
    """How many of the newest generations keep an exact ID table."""

    def to_wire(self) -> dict[str, Any]:
        """The configuration as the API's fields."""
        return {
            "generations": self.generations,
            "generation_capacity": self.generation_capacity,
            "generation_span": span_to_wire(self.generation_span),
            "fp_rate": self.fp_rate,
            "exact_generations": self.exact_generations,
        }

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> NamespaceConfig:
        return cls(
            generations=int(doc["generations"]),
            generation_capacity=int(doc["generation_capacity"]),
            generation_span=parse_span(doc["generation_span"]),
            fp_rate=float(doc["fp_rate"]),
            exact_generations=int(doc["exact_generations"]),
        )


@dataclasses.dataclass(frozen=True)
class Remembers:
    """The remembering guarantee: an ID is remembered for at least ``duration`` when
    fewer than ``generation_capacity`` new IDs arrive per span, and for at least
    ``ids`` later new IDs when traffic is faster."""

    duration: _dt.timedelta
    ids: int


@dataclasses.dataclass(frozen=True)
class FilterStats:
    """A generation's Bloom filter statistics."""

    bits: int
    ones: int
    fill_ratio: float
    estimated_items: float
    estimated_fp: float
    inserted: int


@dataclasses.dataclass(frozen=True)
class Generation:
    """Statistics of one generation."""

    id: int
    opened_at: _dt.datetime
    sealed_at: _dt.datetime | None
    ids: int
    exact: bool
    filter: FilterStats
    memory_bytes: int


@dataclasses.dataclass(frozen=True)
class FilterBudget:
    """The daemon's filter memory budget and its use across all namespaces."""

    budget_bytes: int | None
    charged_bytes: int
    allocated_bytes: int


@dataclasses.dataclass(frozen=True)
class NamespaceView:
    """A namespace's configuration and live statistics."""

    name: str
    config: NamespaceConfig
    remembers_at_least: Remembers
    generations: list[Generation]
    """Live generations, newest (open) first."""
    estimated_fp: float
    memory_bytes: int
    charged_bytes: int
    filter_budget: FilterBudget | None
    created: bool | None = None
    """From ``put_namespace``: ``True`` when the PUT created it (201), ``False`` when it
    updated it (200); ``None`` for the other calls."""
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """The answer as the daemon sent it (fields newer than this client included)."""

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any], created: bool | None = None) -> NamespaceView:
        rem = doc["remembers_at_least"]
        budget = doc.get("filter_budget")
        return cls(
            name=str(doc["name"]),
            config=NamespaceConfig.from_wire(doc["config"]),
            remembers_at_least=Remembers(
                duration=_dt.timedelta(milliseconds=int(rem["ms"])), ids=int(rem["ids"])
            ),
            generations=[_generation(g) for g in doc["generations"]],
            estimated_fp=float(doc["estimated_fp"]),
            memory_bytes=int(doc["memory_bytes"]),
            charged_bytes=int(doc.get("charged_bytes", 0)),
            filter_budget=None
            if budget is None
            else FilterBudget(
                budget_bytes=None if budget.get("budget_bytes") is None else budget["budget_bytes"],
                charged_bytes=int(budget["charged_bytes"]),
                allocated_bytes=int(budget["allocated_bytes"]),
            ),
            created=created,
            raw=doc,
        )


def _generation(g: Mapping[str, Any]) -> Generation:
    f = g["filter"]
    sealed = g.get("sealed_at_ms")
    return Generation(
        id=int(g["id"]),
        opened_at=from_ms(int(g["opened_at_ms"])),
        sealed_at=None if sealed is None else from_ms(int(sealed)),
        ids=int(g["ids"]),
        exact=bool(g["exact"]),
        filter=FilterStats(
            bits=int(f["bits"]),
            ones=int(f["ones"]),
            fill_ratio=float(f["fill_ratio"]),
            estimated_items=float(f["estimated_items"]),
            estimated_fp=float(f["estimated_fp"]),
            inserted=int(f["inserted"]),
        ),
        memory_bytes=int(g["memory_bytes"]),
    )
