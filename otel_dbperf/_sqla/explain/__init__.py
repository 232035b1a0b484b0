"""EXPLAIN plans for slow SELECTs (``DBPERF_EXPLAIN``), run on the connection that ran them.

Safety comes first, because the EXPLAIN runs inside the user's transaction:

- only one plain SELECT (no writes, no ``INTO``, no locking clause, no second statement), as
  read by the database's own lexical rules (:func:`refusal`); with ANALYZE, no call of a
  function outside :data:`SAFE_FUNCTIONS`;
- never in a failed (aborted) PostgreSQL transaction;
- inside a SAVEPOINT that is rolled back when the user is in a transaction, else in a
  short transaction of ours that is rolled back, so the user's transaction, snapshot,
  autocommit mode and idle state are what they were;
- read-only (PostgreSQL ``transaction_read_only``, MariaDB ``tx_read_only`` for ANALYZE)
  and bounded by a statement timeout;
- rate-limited per fingerprint and overall;
- plans are sanitized like statements: bound parameter values appear in plans as literals.

:class:`Explainer` never raises: database errors are counted as failures, bugs go to
:func:`~otel_dbperf._guard.internal_error`.

The jobs: :mod:`.gate` (which statements, how often), :mod:`.session` (the driver sessions),
:mod:`.run` (each dialect's EXPLAIN, the :class:`Explainer`), :mod:`.verdicts` (what a plan says),
:mod:`.listener` (the SQLAlchemy listener); :mod:`.plan` what they share.
"""

from .gate import SAFE_FUNCTIONS, refusal
from .listener import install, plan_attributes, uninstall
from .plan import EVENT_EXPLAIN, ExplainConfig, Plan
from .run import Explainer

__all__ = [
    "EVENT_EXPLAIN",
    "SAFE_FUNCTIONS",
    "ExplainConfig",
    "Explainer",
    "Plan",
    "install",
    "plan_attributes",
    "refusal",
    "uninstall",
]
