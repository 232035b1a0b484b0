"""Span attribute and event names: the public contract of design.md section 4.

The Collector config, dashboards and alert rules import these constants.
"""

# On DB client spans (semconv names where one exists)
CODE_FILE_PATH = "code.file.path"
CODE_LINE_NUMBER = "code.line.number"
CODE_FUNCTION_NAME = "code.function.name"
CODE_STACKTRACE = "code.stacktrace"
DB_QUERY_SUMMARY = "db.query.summary"
QUERY_FINGERPRINT = "dbperf.query.fingerprint"
QUERY_SLOW = "dbperf.query.slow"
N_PLUS_ONE = "dbperf.n_plus_one"
CPU_TIME_MS = "dbperf.cpu.time_ms"
# Extension: a driver-level (DB-API) span that ran inside an ORM-level (SQLAlchemy) span for
# the same query; request roll-ups and reports count the query once, through the ORM span.
QUERY_NESTED = "dbperf.query.nested"
# When a Django or Jinja2 template triggered the query, code.file.path / code.line.number name the
# template and its line, and this is "file:line" of the first application Python frame (the view)
CODE_PYTHON_LOCATION = "dbperf.code.python_location"
# True on a statement of the framework's connection setup (Django's SELECT set_config(...), PRAGMA ...):
# not one of the request's queries (not counted, no slow flag)
QUERY_SETUP = "dbperf.query.setup"
# True on a call to a key-value or document store (redis, memcached, mongodb, ...): not a SQL query
QUERY_NOSQL = "dbperf.query.nosql"
# True on a call with no application frame on the stack (a Celery worker's broker/result-backend traffic)
QUERY_FRAMEWORK = "dbperf.query.framework"
# True on a later fetch of a cursor read in several round trips (asyncpg's `async for` over conn.cursor(),
# Cursor.fetch()): the cursor's first fetch span is the query; the later ones are not counted again
# (their time is added to the request's dbperf.db.duration_ms)
QUERY_CURSOR_FETCH = "dbperf.query.cursor_fetch"
# True on a SELECT that exactly repeats (same statement, same parameters) an earlier one of its request
QUERY_DUPLICATE = "dbperf.query.duplicate"

# On the local root span of each request (roll-up of its DB spans)
DB_QUERY_COUNT = "dbperf.db.query_count"
DB_SLOW_QUERY_COUNT = "dbperf.db.slow_query_count"
DB_DURATION_MS = "dbperf.db.duration_ms"
N_PLUS_ONE_DETECTED = "dbperf.n_plus_one.detected"
N_PLUS_ONE_FINGERPRINT = "dbperf.n_plus_one.fingerprint"
N_PLUS_ONE_QUERY_SUMMARY = "dbperf.n_plus_one.query_summary"
N_PLUS_ONE_REPEAT_COUNT = "dbperf.n_plus_one.repeat_count"
N_PLUS_ONE_CODE_LOCATION = "dbperf.n_plus_one.code_location"
# When the worst repeat is a SQLAlchemy lazy load: the relationship ("Author.books") and the
# loader option that removes the N+1 ("selectinload(Author.books)", "joinedload(Book.author)")
N_PLUS_ONE_RELATIONSHIP = "dbperf.n_plus_one.relationship"
N_PLUS_ONE_SUGGESTION = "dbperf.n_plus_one.suggestion"
# SELECTs of the request that exactly repeat an earlier one (cache candidates), and their DB time
DB_DUPLICATE_COUNT = "dbperf.db.duplicate_count"
DB_DUPLICATE_DURATION_MS = "dbperf.db.duplicate_duration_ms"
# "file:line" of the view when the N+1's location is a template line
N_PLUS_ONE_PYTHON_LOCATION = "dbperf.n_plus_one.python_location"
# Calls to key-value and document stores (present when the request made any): totals, and per system
# dbperf.nosql.<system>.call_count / dbperf.nosql.<system>.duration_ms; one command of one system
# repeated at least DBPERF_N_PLUS_ONE_THRESHOLD times: the repeat verdict and how to batch it
NOSQL_CALL_COUNT = "dbperf.nosql.call_count"
NOSQL_DURATION_MS = "dbperf.nosql.duration_ms"
NOSQL_SLOW_CALL_COUNT = "dbperf.nosql.slow_call_count"
NOSQL_REPEAT_DETECTED = "dbperf.nosql.repeat.detected"
NOSQL_REPEAT_SYSTEM = "dbperf.nosql.repeat.system"
NOSQL_REPEAT_OPERATION = "dbperf.nosql.repeat.operation"
NOSQL_REPEAT_COUNT = "dbperf.nosql.repeat.count"
NOSQL_REPEAT_CODE_LOCATION = "dbperf.nosql.repeat.code_location"
NOSQL_REPEAT_SUGGESTION = "dbperf.nosql.repeat.suggestion"
MEMORY_RSS_BYTES = "dbperf.memory.rss_bytes"
MEMORY_RSS_DELTA_BYTES = "dbperf.memory.rss_delta_bytes"

# SQLAlchemy connection pools and transactions, on the request's root span (see docs/metrics.md)
DB_POOL_WAIT_MS = "dbperf.db.pool_wait_ms"  # total time the request waited for a pooled connection
DB_POOL_TIMEOUTS = "dbperf.db.pool_timeouts"  # its checkouts that timed out
DB_CONNECTIONS_USED = "dbperf.db.connections_used"  # distinct connections it checked out
DB_STATEMENT_TIMEOUTS = "dbperf.db.statement_timeouts"
DB_LOCK_TIMEOUTS = "dbperf.db.lock_timeouts"
DB_DEADLOCKS = "dbperf.db.deadlocks"
DB_SERIALIZATION_FAILURES = "dbperf.db.serialization_failures"
DB_TRANSACTION_COUNT = "dbperf.db.transaction_count"
DB_TRANSACTION_MAX_MS = "dbperf.db.transaction_max_ms"  # the longest transaction, BEGIN to COMMIT/ROLLBACK
DB_IDLE_IN_TRANSACTION_MS = "dbperf.db.idle_in_transaction_ms"  # time in transactions not running a query
DB_LONG_TRANSACTION_COUNT = "dbperf.db.long_transaction_count"  # transactions past DBPERF_LONG_TRANSACTION_MS
# On a failed DB span: statement_timeout, lock_timeout, deadlock, serialization or pool_timeout
DB_ERROR_KIND = "dbperf.db.error.kind"

# Findings beyond N+1 queries, on the request's root span (docs/metrics.md "Request findings")
# CPU-bound: the request's thread CPU time (dbperf.cpu.time_ms) at or over DBPERF_CPU_BOUND_THRESHOLD_MS and
# at least DBPERF_CPU_BOUND_RATIO of its duration; cpu_ratio on every request with resource samples
REQUEST_CPU_BOUND = "dbperf.request.cpu_bound"
REQUEST_CPU_RATIO = "dbperf.request.cpu_ratio"
# the hottest application line of the stack samples taken while the request ran past the threshold
# ("file:line", its function), how many samples (0: none could be taken) and the fix
REQUEST_CPU_BOUND_CODE_LOCATION = "dbperf.request.cpu_bound.code_location"
REQUEST_CPU_BOUND_FUNCTION = "dbperf.request.cpu_bound.function"
REQUEST_CPU_BOUND_SAMPLES = "dbperf.request.cpu_bound.samples"
REQUEST_CPU_BOUND_SUGGESTION = "dbperf.request.cpu_bound.suggestion"
# Outgoing HTTP calls (CLIENT spans with a URL) of the request, and the HTTP N+1: one route template
# ("GET https://api.example.com/users/{id}") called DBPERF_HTTP_N_PLUS_ONE_THRESHOLD times or more
REQUEST_HTTP_CALL_COUNT = "dbperf.request.http.call_count"
REQUEST_HTTP_DURATION_MS = "dbperf.request.http.duration_ms"
REQUEST_HTTP_N_PLUS_ONE_DETECTED = "dbperf.request.http.n_plus_one.detected"
REQUEST_HTTP_N_PLUS_ONE_ROUTE = "dbperf.request.http.n_plus_one.route"
REQUEST_HTTP_N_PLUS_ONE_REPEAT_COUNT = "dbperf.request.http.n_plus_one.repeat_count"
REQUEST_HTTP_N_PLUS_ONE_CODE_LOCATION = "dbperf.request.http.n_plus_one.code_location"
REQUEST_HTTP_N_PLUS_ONE_SUGGESTION = "dbperf.request.http.n_plus_one.suggestion"
# asyncio: the event loop stalled at or over DBPERF_EVENT_LOOP_BLOCKED_MS while this request ran
# (bool on every async request; how often, the total stalled time, where the longest stall was); one
# event per stall
REQUEST_EVENT_LOOP_BLOCKED = "dbperf.request.event_loop.blocked"
REQUEST_EVENT_LOOP_BLOCKED_COUNT = "dbperf.request.event_loop.blocked_count"
REQUEST_EVENT_LOOP_BLOCKED_MS = "dbperf.request.event_loop.blocked_ms"
REQUEST_EVENT_LOOP_CODE_LOCATION = "dbperf.request.event_loop.code_location"
# asyncio: DBPERF_SEQUENTIAL_QUERIES_THRESHOLD or more awaited queries one after another, of distinct
# statements, none inside another's time: they could run concurrently
REQUEST_SEQUENTIAL_DETECTED = "dbperf.request.sequential_queries.detected"
REQUEST_SEQUENTIAL_COUNT = "dbperf.request.sequential_queries.count"
REQUEST_SEQUENTIAL_DURATION_MS = "dbperf.request.sequential_queries.duration_ms"
REQUEST_SEQUENTIAL_SAVING_MS = "dbperf.request.sequential_queries.saving_ms"
REQUEST_SEQUENTIAL_CODE_LOCATION = "dbperf.request.sequential_queries.code_location"
REQUEST_SEQUENTIAL_SUGGESTION = "dbperf.request.sequential_queries.suggestion"

# Span events
EVENT_SLOW_QUERY = "dbperf.slow_query"
EVENT_EXPLAIN = "dbperf.explain"
# On the request span: a checkout that waited at or over the slow threshold (or timed out)
EVENT_POOL_WAIT = "dbperf.pool_wait"
# On the request span: a transaction open at or over DBPERF_LONG_TRANSACTION_MS
EVENT_LONG_TRANSACTION = "dbperf.long_transaction"
# On the request span: the event loop was stalled at or over DBPERF_EVENT_LOOP_BLOCKED_MS
# (dbperf.duration_ms, dbperf.threshold_ms, and code.* of the application frame that held it)
EVENT_EVENT_LOOP_BLOCKED = "dbperf.event_loop_blocked"

# Attributes of the dbperf.pool_wait event (with dbperf.duration_ms and dbperf.threshold_ms): the pool
# (semconv's name, also the pool metrics' label) and its state when the checkout ended
DB_CLIENT_CONNECTION_POOL_NAME = "db.client.connection.pool.name"
POOL_CLASS = "dbperf.pool.class"
POOL_SIZE = "dbperf.pool.size"
POOL_CHECKED_OUT = "dbperf.pool.checked_out"
POOL_IDLE = "dbperf.pool.idle"
POOL_OVERFLOW = "dbperf.pool.overflow"
POOL_PENDING_REQUESTS = "dbperf.pool.pending_requests"
POOL_TIMED_OUT = "dbperf.pool.timed_out"

# Attributes of the dbperf.explain event (DBPERF_EXPLAIN); also on the slow query's log record
EXPLAIN_PLAN = "dbperf.explain.plan"
EXPLAIN_FORMAT = "dbperf.explain.format"
EXPLAIN_VERDICT = "dbperf.explain.verdict"
EXPLAIN_DATABASE = "dbperf.explain.database"
EXPLAIN_ESTIMATED_ROWS = "dbperf.explain.estimated_rows"
EXPLAIN_INDEX_HINT = "dbperf.explain.index_hint"
EXPLAIN_DURATION_MS = "dbperf.explain.duration_ms"

# On slow-query log records: how many records of the same fingerprint the rate limit held back
SLOW_QUERY_SUPPRESSED = "dbperf.slow_query.suppressed"

# Attributes of the dbperf.slow_query event
EVENT_DURATION_MS = "dbperf.duration_ms"
EVENT_THRESHOLD_MS = "dbperf.threshold_ms"

# Standard DB attributes read by otel-dbperf (old and stable semconv)
DB_SYSTEM = "db.system"
DB_SYSTEM_NAME = "db.system.name"
DB_STATEMENT = "db.statement"
DB_QUERY_TEXT = "db.query.text"
