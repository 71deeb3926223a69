"""Python client of ``oncelyd``, the Oncely event-dedup authority.

>>> import oncely
>>> oncely.Verdict.NEW == "new"
True

See the README for the quickstart, the owner-token rule and the retry rules.
"""

from ._async import AsyncClient, Batching, BatchStats
from ._core import MAX_ID_BYTES, UNSET, __version__, random_owner
from ._errors import (
    CheckpointConflict,
    Conflict,
    DecodeError,
    Error,
    FingerprintMismatch,
    HttpError,
    InProgress,
    ResultUnavailable,
    Timeout,
    Unavailable,
    UnknownNamespace,
)
from ._retry import RetryPolicy
from ._sync import Client
from ._types import (
    Claim,
    ClaimVerdict,
    FilterBudget,
    FilterStats,
    Generation,
    Marked,
    NamespaceConfig,
    NamespaceView,
    Remembers,
    Result,
    Verdict,
)

__all__ = [
    "MAX_ID_BYTES",
    "UNSET",
    "AsyncClient",
    "BatchStats",
    "Batching",
    "CheckpointConflict",
    "Claim",
    "ClaimVerdict",
    "Client",
    "Conflict",
    "DecodeError",
    "Error",
    "FilterBudget",
    "FilterStats",
    "FingerprintMismatch",
    "Generation",
    "HttpError",
    "InProgress",
    "Marked",
    "NamespaceConfig",
    "NamespaceView",
    "Remembers",
    "Result",
    "ResultUnavailable",
    "RetryPolicy",
    "Timeout",
    "Unavailable",
    "UnknownNamespace",
    "Verdict",
    "__version__",
    "random_owner",
]
