"""The three dialects' verdicts: a plan read into its text, its worst scan and an index hint
(PostgreSQL, MariaDB/MySQL, SQLite).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator
from typing import Any

from ..._sql import _MAX_SCAN, analyze, code_tokens
from .gate import _NOT_CALLS
from .plan import (
    _MAX_DEPTH,
    _MAX_HINT_COLUMNS,
    _MAX_NODES,
    LARGE_RESULT_ROWS,
    LARGE_TABLE_ROWS,
    SELECTIVE_SHARE,
    ExplainConfig,
    Plan,
)


def _walk(doc: Any) -> Iterator[Any]:
    """Every dict and list in ``doc``, breadth first, at most ``_MAX_NODES``."""
    queue: deque[Any] = deque([doc])
    for _ in range(_MAX_NODES):
        if not queue:
            return
        node = queue.popleft()
        if isinstance(node, (dict, list)):
            yield node
            children = node.values() if isinstance(node, dict) else node
            queue.extend(c for c in children if isinstance(c, (dict, list)))


def _sanitized(value: Any, dialect: str, depth: int = 0) -> Any:
    """A copy of a JSON plan with the literals in its strings replaced by ``?``.

    By the database's own rules: PostgreSQL prints ``'C:\\tmp\\'`` (a backslash is no escape in
    a standard string), MariaDB escapes with backslashes.
    """
    if isinstance(value, str):
        return analyze(value, _MAX_SCAN, dialect).sanitized
    if isinstance(value, (dict, list)) and depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {str(k): _sanitized(v, dialect, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_sanitized(v, dialect, depth + 1) for v in value]
    return value


def _worst_scan(doc: Any, match: tuple[str, str], filter_key: str, table_key: str, cost_key: str) -> Any:
    """The costliest plan node with ``match`` (key, value), a filter and a table, or None.

    PostgreSQL: Seq Scan nodes with a Filter, by Total Cost; MariaDB: access_type ALL
    with an attached_condition, by rows read.
    """
    key, value = match
    scans = [
        node
        for node in _walk(doc)
        if isinstance(node, dict)
        and node.get(key) == value
        and isinstance(node.get(filter_key), str)
        and isinstance(node.get(table_key), str)
    ]
    return max(scans, key=lambda n: _number(n.get(cost_key)), default=None)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


_CAST = re.compile(r"::\s*(?:\"[^\"]*\"|\w+)(?:\s+(?:varying|precision|with(?:out)?\s+time\s+zone))?(?:\[\])*")
_IDENT = r"(?:`[^`]{1,128}`|\"[^\"]{1,128}\"|[^\W\d][\w$]{0,127})"
# Whole names only (the lookaheads stop backtracking into "AN" of "AND ("); not calls, not qualifiers.
_COLUMN_REF = re.compile(rf"(?<![\w$`\"]){_IDENT}(?:\s*\.\s*{_IDENT})*(?![\w$])(?!\s*[.(])")
_NOT_COLUMNS = frozenset(
    re.findall(
        r"\w+",
        "and or not is null true false any all some array like ilike in between case when then else end subplan "
        "hashed exists escape collate similar to at time zone distinct from where select current_date current_time "
        "current_timestamp interval unknown binary",
    )
)


def _unquoted(name: str) -> str:
    return name[1:-1] if name[:1] in '`"' and len(name) >= 2 else name


def _statement_names(statement: str | None, dialect: str) -> set[str] | None:
    """The names (words and quoted names, lowercased) the statement itself has outside literals."""
    if statement is None:
        return None
    readings = code_tokens(statement, dialect)
    if not readings:
        return set()
    names = {_unquoted(text).lower() for kind, text in readings[0] if kind in ("W", "I")}
    for tokens in readings[1:]:  # a name must be one in every reading
        names &= {_unquoted(text).lower() for kind, text in tokens if kind in ("W", "I")}
    return names


def _filter_columns(condition: str, owners: set[str], allowed: set[str] | None = None) -> list[str]:
    """Columns of the scanned table (named in ``owners`` when qualified) in a sanitized condition.

    ``allowed``: the names of the statement the plan is for; a hint names nothing else (a plan's
    filter holds the bound values, which no sanitizer may let through as a "column").
    """
    columns: list[str] = []
    for ref in _COLUMN_REF.finditer(_CAST.sub("", condition[:4096])):
        parts = [p.strip() for p in ref.group().split(".")]  # a quoted name with a dot is rare: then skipped
        name = _unquoted(parts[-1])
        if len(parts) > 1 and _unquoted(parts[-2]).lower() not in owners:
            continue
        if parts[-1][:1] not in '`"' and name.lower() in _NOT_COLUMNS or name in columns:
            continue
        if allowed is not None and name.lower() not in allowed:
            continue
        columns.append(name)
    return columns[:_MAX_HINT_COLUMNS]


_LEADING_WILDCARD = re.compile(r"(?:~~\*?|\blike)\s+(?:\(\s*)?'%", re.I)


def _scan_verdict(
    kind: str, table: str, rows: int | None, columns: list[str], leading_wildcard: bool
) -> tuple[str, str]:
    """(verdict, index hint) for a full scan of ``table`` that filters on ``columns``."""
    hint = f"{table}({', '.join(columns)})" if columns else ""
    est = f" (est. {rows} rows)" if rows is not None else ""
    on = f" filtering on {', '.join(columns)}" if columns else " with a filter"
    if leading_wildcard:
        advice = "a LIKE with a leading wildcard cannot use a plain index; a trigram or full-text index may help"
    else:
        advice = f"an index on {hint} may help" if hint else "an index on the filtered columns may help"
    return f"{kind} {table}{est}{on}: {advice}", hint


def _function_verdict(kind: str, table: str, rows: int | None, function: str, column: str) -> tuple[str, str]:
    """(verdict, index hint) for a full scan whose filter wraps the indexed ``column`` in a function."""
    est = f" (est. {rows} rows)" if rows is not None else ""
    applied = f"applies {function}() to {column}" if function else f"applies a function to {column}"
    expression = f"{table}({function}({column}))" if function else ""
    advice = f"compare the raw column {column}" + (
        f", or index the expression: {expression}" if expression else ", or index the expression it computes"
    )
    return f"{kind} {table}{est}: the filter {applied}, so the index on {column} cannot be used: {advice}", expression


_CALL_ON_COLUMN = re.compile(rf"(?<![\w$`\".])({_IDENT})\s*\(\s*(?:\(\s*)*({_IDENT}(?:\s*\.\s*{_IDENT})*)\s*\)")
_AGGREGATING = frozenset({"count", "sum", "avg", "min", "max", "group", "distinct", "group_concat", "total"})


def _function_on_indexed_column(
    condition: str, owners: set[str], indexed: frozenset[str], allowed: set[str] | None
) -> tuple[str, str] | None:
    """(function, column) of the first call in a sanitized condition that wraps an indexed column of the table.

    The column must be a name of the statement; the function is named only when it is one too
    (MariaDB prints ``lcase`` for ``lower``: then it is "a function"). Never a value: both are names.
    """
    if allowed is None or not indexed:
        return None
    for call in _CALL_ON_COLUMN.finditer(_CAST.sub("", condition[:4096])):
        function = _unquoted(call[1]).lower()
        if function in _NOT_CALLS or function in _NOT_COLUMNS:
            continue
        parts = [p.strip() for p in call[2].split(".")]
        column = _unquoted(parts[-1])
        if len(parts) > 1 and _unquoted(parts[-2]).lower() not in owners:
            continue
        if column.lower() in indexed and column.lower() in allowed:
            return (function if function in allowed else ""), column
    return None


def _unfiltered_verdict(kind: str, table: str, rows: int | None) -> str:
    est = f" (est. {rows} rows)" if rows is not None else ""
    return (
        f"{kind} {table}{est} with no filter: the query reads and returns the whole table; "
        "add a WHERE, a LIMIT, or paginate"
    )


def _sort_verdict(kind: str, rows: int | None, table: str, columns: list[str]) -> tuple[str, str]:
    est = f" of est. {rows} rows" if rows is not None else ""
    hint = f"{table}({', '.join(columns)})" if table and columns else ""
    by = f" by {', '.join(columns)}" if columns else ""
    advice = f"an index on {hint} may serve the ORDER BY" if hint else "an index matching the ORDER BY may avoid it"
    return f"{kind}{est}{by}: {advice}", hint


def _large_result_verdict(rows: int) -> str:
    return (
        f"returns est. {rows} rows to the application: fetch only the rows it uses "
        "(a LIMIT, keyset pagination) or aggregate in SQL"
    )


def _pg_plan(
    doc: Any,
    table_rows: int | None,
    config: ExplainConfig,
    statement: str | None = None,
    indexed: frozenset[str] = frozenset(),
) -> Plan:
    """The plan and the first verdict that applies: a function applied to an indexed column, a missing
    index, an unfiltered full scan, a sort of a large input, a large result."""
    allowed = _statement_names(statement, "postgresql")
    scan = _worst_scan(doc, ("Node Type", "Seq Scan"), "Filter", "Relation Name", "Total Cost")
    verdict, hint, rows = "", "", None
    if scan is not None and _pg_index_could_help(scan, table_rows):
        table, raw = scan["Relation Name"], scan["Filter"]
        owners = {table.lower(), str(scan.get("Alias", table)).lower()}
        sanitized = analyze(raw, _MAX_SCAN, "postgresql").sanitized
        call = _function_on_indexed_column(sanitized, owners, indexed, allowed)
        if call is not None:
            verdict, hint = _function_verdict("Seq Scan on", table, table_rows, *call)
        else:
            columns = _filter_columns(sanitized, owners, allowed)
            wildcard = bool(_LEADING_WILDCARD.search(raw))
            verdict, hint = _scan_verdict("Seq Scan on", table, table_rows, columns, wildcard)
        rows = table_rows
    if not verdict:
        root = doc[0].get("Plan") if isinstance(doc, list) and doc and isinstance(doc[0], dict) else None
        top = root.get("Plan Rows") if isinstance(root, dict) else None
        rows = int(top) if isinstance(top, (int, float)) and not isinstance(top, bool) else None
        if isinstance(root, dict):
            verdict, hint, rows = _pg_other_verdict(doc, root, rows, allowed)
    return Plan("postgresql", "json", _json_text(doc, config, "postgresql"), verdict, rows, hint)


def _pg_other_verdict(
    doc: Any, root: dict[str, Any], result_rows: int | None, allowed: set[str] | None
) -> tuple[str, str, int | None]:
    """(verdict, hint, rows) when no filter wants an index: an unfiltered full scan returned whole, a large
    sort, a large result; or ("", "", rows returned)."""
    big_result = result_rows is not None and result_rows >= LARGE_RESULT_ROWS
    nodes = [n for n in _walk(doc) if isinstance(n, dict)]
    if big_result and root.get("Node Type") != "Limit":
        for node in nodes:
            table, rows = node.get("Relation Name"), _number(node.get("Plan Rows"))
            unfiltered = node.get("Node Type") == "Seq Scan" and "Filter" not in node and isinstance(table, str)
            if unfiltered and rows >= LARGE_TABLE_ROWS:
                return _unfiltered_verdict("Seq Scan on", str(table), int(rows)), "", int(rows)
    for node in nodes:
        rows = _number(node.get("Plan Rows"))
        if node.get("Node Type") != "Sort" or rows < LARGE_TABLE_ROWS:
            continue
        keys = node.get("Sort Key")
        keys = [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []
        children = node.get("Plans")
        child = children[0] if isinstance(children, list) and children and isinstance(children[0], dict) else {}
        table, columns = child.get("Relation Name"), []
        if isinstance(table, str) and child.get("Node Type") == "Seq Scan":
            owners = {table.lower(), str(child.get("Alias", table)).lower()}
            sanitized = analyze(", ".join(keys), _MAX_SCAN, "postgresql").sanitized
            columns = _filter_columns(sanitized, owners, allowed)
        verdict, hint = _sort_verdict("Sort", int(rows), table if isinstance(table, str) else "", columns)
        return verdict, hint, int(rows)
    if big_result and result_rows is not None:
        return _large_result_verdict(result_rows), "", result_rows
    return "", "", result_rows


def _pg_index_could_help(scan: dict[str, Any], table_rows: int | None) -> bool:
    """A large table of which the filter keeps few rows (an index will not beat a scan that keeps most)."""
    if table_rows is None:
        return True  # never analyzed: the query was slow, the scan is the suspect
    return table_rows >= LARGE_TABLE_ROWS and _number(scan.get("Plan Rows")) <= table_rows * SELECTIVE_SHARE


_MARIADB_FULL = ("ALL", "index")  # access types that read every row (of the table, of an index)


def _full_scans(doc: Any) -> list[dict[str, Any]]:
    """MariaDB table nodes that read every row."""
    return [
        n
        for n in _walk(doc)
        if isinstance(n, dict) and n.get("access_type") in _MARIADB_FULL and isinstance(n.get("table_name"), str)
    ]


def _mariadb_plan(
    doc: Any,
    config: ExplainConfig,
    statement: str | None = None,
    indexed: dict[str, frozenset[str]] | None = None,
) -> Plan:
    """The plan and the first verdict that applies (as :func:`_pg_plan`; MariaDB's estimates are rows read)."""
    allowed = _statement_names(statement, "mysql")
    verdict, hint, rows = "", "", None
    for node in _full_scans(doc):  # a function applied to an indexed column (the index is then read in full)
        table, condition, read = node["table_name"], node.get("attached_condition"), _number(node.get("rows"))
        if isinstance(condition, str) and read >= LARGE_TABLE_ROWS:
            sanitized = analyze(condition, _MAX_SCAN, "mysql").sanitized
            keys = (indexed or {}).get(table.lower(), frozenset())
            call = _function_on_indexed_column(sanitized, {table.lower()}, keys, allowed)
            if call is not None:
                kind = f"Full scan (access_type {node['access_type']}) of"
                verdict, hint = _function_verdict(kind, table, int(read), *call)
                rows = int(read)
                break
    scan = _worst_scan(doc, ("access_type", "ALL"), "attached_condition", "table_name", "rows")
    if scan is not None and not verdict:
        rows = int(_number(scan["rows"])) if "rows" in scan else None
        if rows is None or rows >= LARGE_TABLE_ROWS:
            table, raw = scan["table_name"], scan["attached_condition"]
            sanitized = analyze(raw, _MAX_SCAN, "mysql").sanitized
            columns = _filter_columns(sanitized, {table.lower()}, allowed)
            wildcard = bool(_LEADING_WILDCARD.search(raw))
            verdict, hint = _scan_verdict("Full scan (access_type ALL) of", table, rows, columns, wildcard)
    if not verdict:
        verdict, hint, other_rows = _mariadb_other_verdict(doc, allowed)
        rows = other_rows if verdict else rows
    return Plan("mysql", "json", _json_text(doc, config, "mysql"), verdict, rows, hint)


def _mariadb_other_verdict(doc: Any, allowed: set[str] | None) -> tuple[str, str, int | None]:
    """(verdict, hint, rows): an unfiltered full scan, a large filesort, a large single-table result."""
    bounded = allowed is None or "limit" in allowed or bool(allowed & _AGGREGATING)
    tables = [n for n in _walk(doc) if isinstance(n, dict) and isinstance(n.get("table_name"), str)]
    if not bounded:
        for node in _full_scans(doc):
            read = _number(node.get("rows"))
            if "attached_condition" not in node and read >= LARGE_TABLE_ROWS:
                kind = f"Full scan (access_type {node['access_type']}) of"
                return _unfiltered_verdict(kind, node["table_name"], int(read)), "", int(read)
    for node in _walk(doc):
        sort = node.get("filesort") if isinstance(node, dict) else None
        if not isinstance(sort, dict):
            continue
        sorted_tables = [n for n in _walk(sort) if isinstance(n, dict) and isinstance(n.get("table_name"), str)]
        read = max((_number(n.get("rows")) for n in sorted_tables), default=0.0)
        if read < LARGE_TABLE_ROWS:
            continue
        table = sorted_tables[0]["table_name"] if len(sorted_tables) == 1 else ""
        key = sort.get("sort_key")
        columns: list[str] = []
        if table and isinstance(key, str):
            columns = _filter_columns(analyze(key, _MAX_SCAN, "mysql").sanitized, {table.lower()}, allowed)
        verdict, hint = _sort_verdict("Filesort", int(read), table, columns)
        return verdict, hint, int(read)
    if not bounded and len(tables) == 1:
        node = tables[0]
        share = _number(node.get("filtered")) if "filtered" in node else 100.0
        returned = int(_number(node.get("rows")) * min(share, 100.0) / 100.0)
        if returned >= LARGE_RESULT_ROWS:
            return _large_result_verdict(returned), "", returned
    return "", "", None


_SQLITE_FULL_SCAN = re.compile(r"SCAN (?:TABLE )?([^\W\d][\w$]*)(?: AS ([^\W\d][\w$]*))?\Z")
# any scan of every row: of the table, or of an index that covers the query
_SQLITE_ANY_SCAN = re.compile(
    r"SCAN (?:TABLE )?([^\W\d][\w$]*)(?: AS ([^\W\d][\w$]*))?(?: USING (?:COVERING )?INDEX [^\W\d][\w$]*)?\Z"
)
_SQLITE_TEMP_SORT = "USE TEMP B-TREE FOR ORDER BY"
_SQLITE_WHERE = re.compile(r"\bwhere\b(.*?)(?:\b(?:group|order|limit|having|window|union|except|intersect)\b|\Z)", re.I)
_SQLITE_ORDER = re.compile(r"\border\s+by\b(.*?)(?:\b(?:limit|union|except|intersect)\b|\Z)", re.I)
_SQLITE_TABLE = re.compile(
    r"\b(?:from|join)\s+([^\W\d][\w$]*)(?:\s+(?:as\s+)?(?!(?:where|join|on|left|inner|cross|natural|group|order|limit)\b)([^\W\d][\w$]*))?",
    re.I,
)


def _sqlite_plan(
    rows: list[tuple[Any, ...]],
    statement: str,
    config: ExplainConfig,
    indexed: dict[str, frozenset[str]] | None = None,
) -> Plan:
    """Plan from ``EXPLAIN QUERY PLAN`` rows (id, parent, notused, detail), drawn as an indented tree.

    SQLite plans carry no row estimates: the verdicts are a function applied to an indexed column,
    a missing index, an unfiltered full scan and a sort in a temporary B-tree (no large-result verdict).
    """
    sanitized = analyze(statement, _MAX_SCAN, "sqlite").sanitized
    where = _SQLITE_WHERE.search(sanitized)
    allowed = _statement_names(statement, "sqlite")
    depth: dict[Any, int] = {}
    lines, verdict, hint = [], "", ""
    scans: list[str] = []
    temp_sort = False
    for row in rows[:_MAX_NODES]:
        node, parent, detail = row[0], row[1], analyze(str(row[-1]), _MAX_SCAN, "sqlite").sanitized
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * min(depth[node], 32) + detail)
        temp_sort = temp_sort or detail == _SQLITE_TEMP_SORT
        scan = _SQLITE_ANY_SCAN.fullmatch(detail)
        if scan is None:
            continue
        scanned = scan[2] or scan[1]
        scans.append(scanned)
        if where and not verdict:
            table = _sqlite_table(scanned, sanitized)
            columns = (indexed or {}).get(table.lower(), frozenset())
            call = _function_on_indexed_column(where[1], {scanned.lower(), table.lower()}, columns, allowed)
            if call is not None:
                verdict, hint = _function_verdict("Full scan (SCAN) of", table, None, *call)
            elif _SQLITE_FULL_SCAN.fullmatch(detail):
                verdict, hint = _sqlite_verdict(scanned, sanitized, where[1], statement)
    if not verdict and scans:
        verdict, hint = _sqlite_other_verdict(scans, sanitized, where is not None, temp_sort, allowed)
    return Plan("sqlite", "text", _bounded("\n".join(lines), config), verdict, None, hint)


def _sqlite_other_verdict(
    scans: list[str], sanitized: str, filtered: bool, temp_sort: bool, allowed: set[str] | None
) -> tuple[str, str]:
    bounded = allowed is None or "limit" in allowed or bool(allowed & _AGGREGATING)
    if not filtered and not bounded and len(scans) == 1:
        return _unfiltered_verdict("Full scan (SCAN) of", _sqlite_table(scans[0], sanitized), None), ""
    order = _SQLITE_ORDER.search(sanitized)
    if temp_sort and order is not None:
        table = _sqlite_table(scans[0], sanitized) if len(scans) == 1 else ""
        owners = {scans[0].lower(), table.lower()} if table else set()
        columns = _filter_columns(order[1], owners, allowed) if table else []
        return _sort_verdict("Sort in a temporary B-tree", None, table, columns)
    return "", ""


def _sqlite_table(scanned: str, sanitized: str) -> str:
    """SQLite names a scan by alias: the table behind it."""
    for m in _SQLITE_TABLE.finditer(sanitized):
        if scanned.lower() in (m[1].lower(), (m[2] or "").lower()):
            return str(m[1])
    return scanned


def _sqlite_verdict(scanned: str, sanitized: str, where: str, statement: str) -> tuple[str, str]:
    """SQLite names the scan by alias: find its table, then the table's columns in the WHERE clause."""
    table = _sqlite_table(scanned, sanitized)
    columns = _filter_columns(where, {scanned.lower(), table.lower()}, _statement_names(statement, "sqlite"))
    if not columns:
        return "", ""  # the filter is on another table: this scan is the join's outer loop
    return _scan_verdict("Full scan (SCAN) of", table, None, columns, False)


def _json_text(doc: Any, config: ExplainConfig, dialect: str) -> str:
    return _bounded(json.dumps(_sanitized(doc, dialect), separators=(",", ":"), ensure_ascii=False), config)


def _bounded(text: str, config: ExplainConfig) -> str:
    limit = max(config.max_plan_chars, 1)
    return text if len(text) <= limit else text[: limit - 1] + "…"
