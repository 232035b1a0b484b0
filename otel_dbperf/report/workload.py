"""The server's workload statistics beside the app's queries: ``db.server.top_query`` records joined by fingerprint.

``otel-dbperf report`` reads, from the same inputs as the spans (one file holding every signal, as
the Collector's file exporter writes it, or the monitor's file given as one more FILE), the log
records ``otel-dbperf dbmonitor`` emits per fingerprint and interval, sums them per fingerprint, and
joins them to the app's fingerprints:

1. by ``dbperf.query.fingerprint``: the monitor computes it from the server's text with the app's
   own code (``otel_dbperf/_sql.py``), so on PostgreSQL the two sides agree as they stand;
2. else by the same normalization with token spacing ignored (:func:`text_key`), for servers that
   respace their text (MariaDB's digests: `` `products` . `id` ``, ``IN (...)``).

The join happens here, not in the Collector (which has no cross-signal join and would hold state
across batches) nor in the app (which never sees other clients' load): statistics per fingerprint are
aggregates over an interval, and the report is where both sides' aggregates meet.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .. import _sql

TOP_QUERY_EVENT = "db.server.top_query"
_MAX_FINGERPRINTS = 100_000
_UNMATCHED_SHOWN = 10
# a frequent full scan (PostgreSQL has no per-statement scan counter): at least this many calls, each
# reading at least _SCAN_BLOCKS buffer blocks and at least _SCAN_RATIO times more blocks than rows
_SCAN_CALLS = 2
_SCAN_BLOCKS = 100
_SCAN_RATIO = 10
_SCAN_ROWS = 1000  # MariaDB/MySQL: rows examined per call by a statement that used no index
_FULL_SCANS_SHOWN = 10

# counters summed per fingerprint: (attribute suffix, key in the report)
_PG = (("calls", "calls"), ("total_exec_time_ms", "total_ms"), ("rows", "rows"),
       ("shared_blks_hit", "shared_blks_hit"), ("shared_blks_read", "shared_blks_read"),
       ("temp_blks_written", "temp_blks_written"))  # fmt: skip
_MYSQL = (("calls", "calls"), ("total_time_ms", "total_ms"), ("rows_sent", "rows"),
          ("rows_examined", "rows_examined"), ("no_index_used", "no_index_used"), ("full_scans", "full_scans"),
          ("tmp_disk_tables", "tmp_disk_tables"))  # fmt: skip
_COUNTERS = {"postgresql": _PG, "mysql": _MYSQL}

# PostgreSQL parses ``x IN ($1)`` as ``x = $1``: one query id, the text of whichever came first
_ONE_ITEM_IN = re.compile(r"\bin \( (\? (?:: : [a-z_][a-z0-9_]* )?)\)(?: |$)")
_SPACED_LIST = re.compile(r"\( (?:\? (?:, \? )*|\. \. \. )\)")
_LIST_RUN = re.compile(r"\( \? \)(?: , \( \? \))+")


def text_key(text: str, dialect: str) -> str:
    """A statement's normalization with token spacing ignored: comments dropped, literals and
    placeholders ``?``, names unquoted and lower case, IN-lists (MariaDB's ``(...)`` too) one ``?``,
    a one-item ``IN (?)`` the ``= ?`` PostgreSQL makes of it."""
    readings = _sql.code_tokens(text, dialect)
    if not readings:
        return ""
    out: list[str] = []
    for kind, tok in readings[0]:
        if kind == "C":
            continue
        if kind in ("S", "N", "P") or tok == "?":
            out.append("?")
        elif kind == "I":
            out.append(tok[1:-1].lower() if len(tok) >= 2 and tok[0] in '`"[' else tok.lower())
        else:
            out.append(tok.lower())
    normalized = _ONE_ITEM_IN.sub(r"= \1", " ".join(out))
    normalized = _LIST_RUN.sub("( ? )", _SPACED_LIST.sub("( ? )", normalized)).strip()
    return hashlib.blake2b(normalized.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


@dataclass
class ServerStatement:
    system: str
    fingerprint: str
    text: str
    summary: str
    counters: dict[str, float]
    records: int = 0


def _value(v: Any) -> Any:
    if not isinstance(v, dict):
        return None
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    return None


class WorkloadStats:
    """``db.server.top_query`` records summed per (database system, fingerprint)."""

    def __init__(self, since_ns: int = 0, until_ns: int = 0) -> None:
        self.since_ns, self.until_ns = since_ns, until_ns
        self.records = 0
        self.statements: dict[tuple[str, str], ServerStatement] = {}

    def add_message(self, message: dict[str, Any]) -> int:
        """The ``db.server.top_query`` records of one OTLP JSON logs line; how many were read."""
        read = 0
        for rl in message.get("resourceLogs") or ():
            for sl in (rl.get("scopeLogs") or ()) if isinstance(rl, dict) else ():
                for record in (sl.get("logRecords") or ()) if isinstance(sl, dict) else ():
                    try:
                        read += self._add_record(record)
                    except (TypeError, ValueError, AttributeError, OverflowError):
                        continue  # a record of another tool, or damaged: not ours to read
        return read

    def _add_record(self, record: dict[str, Any]) -> int:
        attrs = {kv["key"]: _value(kv.get("value")) for kv in record.get("attributes") or () if "key" in kv}
        if record.get("eventName") != TOP_QUERY_EVENT and attrs.get("event.name") != TOP_QUERY_EVENT:
            return 0
        stamp = int(record.get("timeUnixNano") or record.get("observedTimeUnixNano") or 0)
        if (self.since_ns and stamp < self.since_ns) or (self.until_ns and stamp > self.until_ns):
            return 0
        system, fingerprint = attrs.get("db.system.name"), attrs.get("dbperf.query.fingerprint")
        if system not in _COUNTERS or not isinstance(fingerprint, str):
            return 0
        key = (system, fingerprint)
        entry = self.statements.get(key)
        if entry is None:
            if len(self.statements) >= _MAX_FINGERPRINTS:
                return 0
            entry = self.statements[key] = ServerStatement(
                system,
                fingerprint,
                str(attrs.get("db.query.text") or ""),
                str(attrs.get("db.query.summary") or ""),
                dict.fromkeys((name for _, name in _COUNTERS[system]), 0.0),
            )
        for suffix, name in _COUNTERS[system]:
            value = attrs.get(f"{system}.{suffix}")
            if isinstance(value, (int, float)) and value >= 0:
                entry.counters[name] += value
        entry.records += 1
        self.records += 1
        return 1

    def _columns(self, s: ServerStatement) -> dict[str, Any]:
        c = s.counters
        calls = c["calls"]
        out: dict[str, Any] = {"system": s.system, "fingerprint": s.fingerprint}
        out.update({k: (round(v, 3) if k == "total_ms" else int(v)) for k, v in c.items()})
        out["mean_ms"] = round(c["total_ms"] / calls, 3) if calls else 0.0
        return out

    def join(self, report: Any) -> dict[str, Any]:
        """The server side of the report: per app fingerprint its server columns, the match rate,
        the unmatched app fingerprints, the server's workload from elsewhere, frequent full scans."""
        systems = {system for system, _ in self.statements}
        by_fingerprint = {fp: s for (_, fp), s in self.statements.items()}
        by_text: dict[str, ServerStatement] = {}
        for s in self.statements.values():
            key = text_key(s.text, s.system)
            if key:
                by_text.setdefault(key, s)
        matched: dict[str, ServerStatement] = {}
        by_text_count = 0
        candidates = [f for f in report.fingerprints.values() if not f.system or _sql.dialect_of(f.system) in systems]
        for f in candidates:
            hit = by_fingerprint.get(f.fingerprint)
            if hit is None and f.statement:
                for system in sorted(systems):
                    hit = by_text.get(text_key(f.statement, system))
                    if hit is not None:
                        by_text_count += 1
                        break
            if hit is not None:
                matched[f.fingerprint] = hit
        used = {id(s) for s in matched.values()}
        others = [s for s in self.statements.values() if id(s) not in used]
        server_ms = sum(s.counters["total_ms"] for s in self.statements.values())
        other_ms = sum(s.counters["total_ms"] for s in others)
        unmatched = sorted((f for f in candidates if f.fingerprint not in matched), key=lambda f: -f.count)
        return {
            "records": self.records,
            "fingerprints": len(candidates),
            "matched": len(matched),
            "matched_by_text": by_text_count,
            "match_rate": round(100.0 * len(matched) / len(candidates), 1) if candidates else 0.0,
            "unmatched": [
                {"fingerprint": f.fingerprint, "summary": f.summary, "count": f.count, "statement": f.statement}
                for f in unmatched[:_UNMATCHED_SHOWN]
            ],
            "other_clients": {
                "fingerprints": len(others),
                "total_ms": round(other_ms, 3),
                "share_of_server_time": round(100.0 * other_ms / server_ms, 1) if server_ms else 0.0,
            },
            "by_fingerprint": {fp: self._columns(s) for fp, s in matched.items()},
            "full_scans": self._full_scans(matched, report),
        }

    def _full_scans(self, matched: dict[str, ServerStatement], report: Any) -> list[dict[str, Any]]:
        """Statements that scan much more than they return, called often: index candidates even when
        no single call is slow."""
        found: list[tuple[float, dict[str, Any]]] = []
        app_of = {id(s): fp for fp, s in matched.items()}
        for s in self.statements.values():
            c, calls = s.counters, s.counters["calls"]
            if calls < _SCAN_CALLS or not s.summary.upper().startswith(("SELECT", "UPDATE", "DELETE")):
                continue
            if s.system == "mysql":
                scans = max(c["no_index_used"], c["full_scans"])
                examined = c["rows_examined"] / calls
                if not scans or examined < _SCAN_ROWS:
                    continue
                why = f"{int(scans)} of {int(calls)} calls used no index ({examined:.0f} rows examined per call)"
                weight = c["rows_examined"]
            else:
                blocks = c["shared_blks_hit"] + c["shared_blks_read"]
                per_call, rows_per_call = blocks / calls, c["rows"] / calls
                if per_call < _SCAN_BLOCKS or per_call < _SCAN_RATIO * max(rows_per_call, 1.0):
                    continue
                why = f"{per_call:.0f} buffer blocks per call for {rows_per_call:.1f} rows, {int(calls)} calls"
                weight = blocks
            fp = app_of.get(id(s), "")
            app = report.fingerprints.get(fp) if fp else None
            found.append(
                (
                    weight,
                    {
                        "summary": s.summary,
                        "tables": s.summary.split()[1:],
                        "fingerprint": fp or s.fingerprint,
                        "from_app": bool(fp),
                        "why": why,
                        "code_locations": [loc for loc, _ in app.locations.most_common(3)] if app else [],
                        "statement": app.statement if app else s.text,
                    },
                )
            )
        found.sort(key=lambda e: -e[0])
        return [e for _, e in found[:_FULL_SCANS_SHOWN]]


def annotate(data: dict[str, Any], server: dict[str, Any]) -> None:
    """The report's data with the server's side: ``server`` and each top query's ``server`` columns."""
    columns = server["by_fingerprint"]
    for q in data.get("top_queries", ()):
        q["server"] = columns.get(q["fingerprint"])
    data["server"] = {k: v for k, v in server.items() if k != "by_fingerprint"}


def render_lines(server: dict[str, Any]) -> list[str]:
    """The report's server section (terminal)."""
    rate = f"{server['match_rate']:.1f}%"
    lines = [
        f"server statistics matched {server['matched']} of {server['fingerprints']} fingerprints ({rate})"
        + (f", {server['matched_by_text']} of them by normalized text" if server["matched_by_text"] else "")
        + f"; {server['records']} db.server.top_query records",
    ]
    other = server["other_clients"]
    if other["fingerprints"]:
        lines.append(
            f"  not from these spans (other clients, the driver's own statements): {other['fingerprints']} "
            f"fingerprints, {other['total_ms']:.1f} ms, {other['share_of_server_time']:.1f}% of the server's time"
        )
    for u in server["unmatched"][:5]:
        lines.append(f"  unmatched: {u['summary'] or '(no summary)'}  [{u['fingerprint']}]  {u['count']}x")
    return lines


def render_columns(columns: dict[str, Any]) -> str:
    """One top query's server columns (terminal)."""
    head = (
        f"server: {columns['calls']} calls (all clients)  mean {columns['mean_ms']:.2f} ms"
        f"  total {columns['total_ms']:.1f} ms  rows {columns['rows']}"
    )
    if columns["system"] == "postgresql":
        return head + (
            f"  blocks hit {columns['shared_blks_hit']} read {columns['shared_blks_read']}"
            f"  temp written {columns['temp_blks_written']}"
        )
    return head + (
        f"  rows examined {columns['rows_examined']}  no index {columns['no_index_used']}"
        f"  full scans {columns['full_scans']}  disk temp tables {columns['tmp_disk_tables']}"
    )


def render_full_scans(scans: list[dict[str, Any]]) -> list[str]:
    lines = ["Frequent full scans (server statistics: index candidates even when no single call is slow)"]
    if not scans:
        lines.append("  none found")
    for e in scans:
        where = f" on {', '.join(e['tables'])}" if e["tables"] else ""
        lines.append(
            f"  {e['summary'] or '(no summary)'}  [{e['fingerprint']}]  {e['why']}: "
            f"index the columns its WHERE / JOIN filters{where}" + ("" if e["from_app"] else " (not from these spans)")
        )
        for loc in e["code_locations"]:
            lines.append(f"      at {loc}")
    return lines
