from __future__ import annotations

from otel_dbperf import _guard

_guard.RERAISE = True  # the guard's own bugs fail these tests loudly
