"""Read the spans the demo exported (console exporter, JSON) and print what otel-dbperf found."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any


def read_spans(path: str) -> list[dict[str, Any]]:
    text = open(path, encoding="utf-8").read()
    decoder, pos, spans = json.JSONDecoder(), 0, []
    while True:
        start = text.find("{", pos)
        if start < 0:
            return spans
        try:
            obj, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj and "attributes" in obj:
            spans.append(obj)


def main(path: str) -> int:
    spans = read_spans(path)
    db = [s for s in spans if "dbperf.query.fingerprint" in s["attributes"]]
    roots = [s for s in spans if "dbperf.db.query_count" in s["attributes"]]
    print(f"{len(spans)} spans read: {len(roots)} requests, {len(db)} DB spans\n")
    slow: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in db:
        if s["attributes"].get("dbperf.query.slow"):
            slow[s["attributes"]["dbperf.query.fingerprint"]].append(s)
    print("Slow queries (dbperf.query.slow=true):")
    for fingerprint, group in sorted(slow.items(), key=lambda kv: -len(kv[1])):
        a = group[0]["attributes"]
        statement = a.get("db.query.text") or a.get("db.statement")
        print(f"  {len(group)}x  {fingerprint}  {a.get('db.query.summary')}")
        print(f"      {statement}")
        print(f"      issued at {a.get('code.file.path')}:{a.get('code.line.number')} in {a.get('code.function.name')}")
        print(f"      trace {group[0]['context']['trace_id']}")
    print("\nN+1 (dbperf.n_plus_one.detected=true):")
    for r in roots:
        a = r["attributes"]
        if a.get("dbperf.n_plus_one.detected"):
            print(
                f"  {r['name']}: {a['dbperf.n_plus_one.repeat_count']}x {a.get('dbperf.n_plus_one.query_summary')} "
                f"at {a.get('dbperf.n_plus_one.code_location')} ({a['dbperf.db.query_count']} queries, "
                f"{a['dbperf.db.duration_ms']:.1f} ms in the DB)"
            )
    return 0 if db else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
