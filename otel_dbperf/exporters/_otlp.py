"""An OTLP trace encoder that writes the protobuf bytes directly, and the exporter that sends them.

The SDK's OTLP exporters build one protobuf message per span, attribute, value, event and
link (``encode_spans`` in opentelemetry-exporter-otlp-proto-common) and serialize the tree:
about 21,000 instructions per attribute per span, nearly all message construction
(``PyUpb_Message_Init``, ``MergeFrom``). :class:`SpanEncoder` writes the same
``ExportTraceServiceRequest`` bytes itself (varints, length-delimited fields, fields in
field-number order as upb writes them), with caches where the same bytes recur:

- the resource and scope blocks, once per object (kept by identity, bounded);
- each attribute key, encoded once;
- each whole ``KeyValue`` of a recurring (key, value) pair: bools, ints, strings up to
  :data:`MAX_CACHED_CHARS` characters (``db.system.name``, ``code.file.path``,
  fingerprints, statements), at most :data:`MAX_CACHED_PAIRS` pairs per kind, the cache
  emptied when full.

What it emits is what ``encode_spans`` emits, proved by ``tests/test_otlp_encoder.py``
(our bytes and the stock encoder's, equal byte for byte and after decoding, over a fuzzed
corpus and real SDK spans), including what the stock encoder leaves out (a link's
trace_state, dropped counts of resources and scopes) and what it skips with a log line (an
attribute whose value cannot be encoded: an int outside int64, a string with a lone
surrogate, a value of another type). Values of rarer types (bytes, None in a sequence,
mappings, nested or other sequences) are encoded by the stock value encoder for that
attribute only.

:class:`FastOTLPSpanExporter` sends the bytes through the SDK's own ``OTLPSpanExporter``
client (its session, retries, compression and headers). An exception in the encoder sends
that batch down the stock path instead (counted in ``fallbacks``); ``DBPERF_OTLP_ENCODER=stock``
turns it off.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from .. import _pause
from .._guard import internal_error
from .._sdk_compat import otlp_export_parts, otlp_exporter_shut_down

_log = logging.getLogger("otel_dbperf")

MAX_CACHED_PAIRS = 4096  # (key, value) pairs per value kind and field; the cache is emptied when full
MAX_CACHED_CHARS = 256  # longer strings are encoded each time (encoding them is a copy; caching costs memory)
MAX_CACHED_BLOCKS = 64  # resource and scope objects whose encoded block is kept

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64 = 1 << 64

_BYTE = [bytes((i,)) for i in range(256)]

_PACK_Q = struct.Struct("<Q").pack  # fixed64
_PACK_D = struct.Struct("<d").pack  # double
_PACK_TIMES = struct.Struct("<BQBQ").pack  # start_time_unix_nano (7) and end_time_unix_nano (8), fixed64
_PACK_IDS = struct.Struct(">HQQHQ").pack  # trace_id (1, 16 bytes) and span_id (2, 8 bytes), big-endian
_PACK_IDS_PARENT = struct.Struct(">HQQHQHQ").pack  # and parent_span_id (4, 8 bytes)
_M64 = (1 << 64) - 1

# tags: (field number << 3) | wire type, one byte each below field 16
_T_KV_KEY = b"\x0a"  # KeyValue.key (1)
_T_KV_VALUE = b"\x12"  # KeyValue.value (2)
_T_STRING = b"\x0a"  # AnyValue.string_value (1)
_BOOL_TRUE = b"\x10\x01"  # AnyValue.bool_value (2)
_BOOL_FALSE = b"\x10\x00"
_T_INT = b"\x18"  # AnyValue.int_value (3)
_T_DOUBLE = b"\x21"  # AnyValue.double_value (4)
_T_ARRAY = b"\x2a"  # AnyValue.array_value (5); ArrayValue.values (1) is 0x0a

#: Span.flags (16, fixed32): SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, with or without ..._IS_REMOTE_MASK
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", 0x300)
#: Link.flags (6, fixed32)
_LINK_FLAGS_LOCAL = b"\x35" + struct.pack("<I", 0x100)
_LINK_FLAGS_REMOTE = b"\x35" + struct.pack("<I", 0x300)

#: Span.kind (6): the SDK's SpanKind to the OTLP enum, as the stock encoder's _SPAN_KIND_MAP
_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
#: the same by the members' ids (a dict keyed by an Enum member hashes it in Python)
_KIND_BY_ID = {id(kind): encoded for kind, encoded in _KIND.items()}
#: Span.status (15) of a status without a description, by the id of its StatusCode member
_STATUS_BY_ID = {
    id(StatusCode.UNSET): b"\x7a\x00",
    id(StatusCode.OK): b"\x7a\x02\x18\x01",
    id(StatusCode.ERROR): b"\x7a\x02\x18\x02",
}


def _varint(n: int) -> bytes:
    """A non-negative int as a protobuf varint."""
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _count(tag: bytes, n: int) -> bytes:
    """A uint32 field (a dropped count), never 0 here; out of range raises, as upb does."""
    if not 0 < n <= 0xFFFFFFFF:
        raise ValueError("count out of uint32 range")
    return tag + _varint(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    n = len(payload)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _string_field(tag: bytes, text: str | None) -> bytes:
    """A proto3 string field: nothing when empty or None, as upb writes it."""
    if not text:
        return b""
    return _field(tag, text.encode("utf-8"))


class _Unencodable(Exception):
    """A value the stock encoder would skip (with a log line)."""


def _any_value(value: Any) -> bytes:
    """The AnyValue bytes of a value of the common types; anything else goes to the stock encoder."""
    cls = value.__class__
    if cls is str:
        return _field(_T_STRING, value.encode("utf-8"))
    if cls is bool:
        return _BOOL_TRUE if value else _BOOL_FALSE
    if cls is int:
        if value >= 0:
            if value > _INT64_MAX:
                raise _Unencodable
            return _T_INT + _varint(value)
        if value < _INT64_MIN:
            raise _Unencodable
        return _T_INT + _varint(value + _UINT64)
    if cls is float:
        return _T_DOUBLE + _PACK_D(value)
    if cls is tuple or cls is list:
        out = []
        for item in value:
            c = item.__class__
            if c is not str and c is not bool and c is not int and c is not float:
                return _stock_value(value)
            out.append(_field(b"\x0a", _any_value(item)))
        return _field(_T_ARRAY, b"".join(out))
    return _stock_value(value)


def _stock_value(value: Any) -> bytes:
    """The stock encoder's AnyValue for the rarer types (bytes, None, mappings, other sequences)."""
    # a private module of opentelemetry-exporter-otlp-proto-common (checked against 1.45.1): the
    # definition of what the stock encoder emits. Any error here skips the attribute, as there.
    from opentelemetry.exporter.otlp.proto.common._internal import _encode_value

    return _encode_value(value).SerializeToString()  # type: ignore[no-any-return]


def _items(attributes: Any) -> Any:
    """The (key, value) pairs of a span's, event's, link's, scope's or resource's attributes."""
    # the SDK's BoundedAttributes keeps a plain dict in ``_dict`` (opentelemetry-api 1.45.1): reading it
    # saves a lock and a Python-level iterator per attribute; any other mapping is read through items()
    inner = getattr(attributes, "_dict", None)
    if inner.__class__ is dict:
        return inner.items()
    return attributes.items()


_DIRECT: dict[type, bool] = {}  # span class -> its attributes, events and links properties are ReadableSpan's


def _direct(span: Any) -> bool:
    """Whether the span's attributes, events and links can be read from ``ReadableSpan._attributes``,
    ``_events`` and ``_links`` (opentelemetry-sdk 1.45.1: what the public properties wrap in a
    MappingProxyType or copy into a tuple under a lock): the class overrides none of the three
    properties and has the fields. Otherwise the properties, as the stock encoder reads them."""
    cls = span.__class__
    direct = _DIRECT.get(cls)
    if direct is None:
        direct = _DIRECT[cls] = all(
            getattr(cls, name, None) is getattr(ReadableSpan, name) and hasattr(span, f"_{name}")
            for name in ("attributes", "events", "links")
        )
    return direct


class SpanEncoder:
    """Turns a batch of ReadableSpans into ``ExportTraceServiceRequest`` bytes, as ``encode_spans`` does."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}  # attribute key -> its KeyValue.key field
        # per enclosing field tag: (key, value) -> the whole field (tag, length, KeyValue)
        self._str: dict[bytes, dict[tuple[str, str], bytes]] = {}
        self._int: dict[bytes, dict[tuple[str, int], bytes]] = {}
        self._bool: dict[bytes, dict[tuple[str, bool], bytes]] = {}
        self._resources: dict[int, tuple[Any, bytes]] = {}  # id -> (the object, its Resource field)
        self._scopes: dict[int, tuple[Any, bytes]] = {}  # id -> (the object, InstrumentationScope + schema_url)
        self._status: dict[tuple[int, str | None], bytes] = {}
        self.skipped = 0  # attributes skipped as the stock encoder skips them
        #: every ``pause_every`` spans the encoding sleeps ``pause_s`` seconds (None: never), so that a
        #: request thread waiting for the GIL gets it then rather than at the next switch interval
        self.pause_every = _pause.PAUSE_EVERY
        self.pause_s: float | None = _pause.PAUSE_S

    # ------------------------------------------------------------------ attributes

    def _key(self, key: str) -> bytes:
        encoded = self._keys.get(key)
        if encoded is None:
            if not isinstance(key, str):  # upb refuses it, and the stock encoder skips the attribute
                raise TypeError("attribute key is not a string")
            encoded = _string_field(_T_KV_KEY, key)  # proto3: an empty key is left out
            if len(self._keys) >= MAX_CACHED_PAIRS:
                self._keys.clear()
            self._keys[key] = encoded
        return encoded

    def _key_value(self, tag: bytes, key: str, value: Any) -> bytes:
        """The whole field ``tag`` holding KeyValue(key, value), uncached."""
        try:
            return _field(tag, self._key(key) + _field(_T_KV_VALUE, _any_value(value)))
        except Exception as exc:  # noqa: BLE001 - the stock encoder skips the attribute and logs
            self.skipped += 1
            _log.warning(
                "otel-dbperf OTLP encoder: attribute %r skipped (%s), as the stock encoder skips it",
                key,
                type(exc).__name__,
            )
            return b""

    def attributes(self, tag: bytes, attributes: Any) -> bytes:
        """Every attribute as a repeated KeyValue field ``tag``."""
        if not attributes:
            return b""
        strs = self._str.get(tag)
        if strs is None:
            strs = self._str[tag] = {}
            ints = self._int[tag] = {}
            bools = self._bool[tag] = {}
        else:
            ints = self._int[tag]
            bools = self._bool[tag]
        out: list[bytes] = []
        append = out.append
        for key, value in _items(attributes):
            cls = value.__class__
            if cls is str:
                if len(value) > MAX_CACHED_CHARS:
                    append(self._key_value(tag, key, value))
                    continue
                cache: dict[Any, bytes] = strs
            elif cls is bool:
                cache = bools
            elif cls is int:
                cache = ints
            else:
                append(self._key_value(tag, key, value))
                continue
            pair = (key, value)
            encoded = cache.get(pair)
            if encoded is None:
                encoded = self._key_value(tag, key, value)
                if len(cache) >= MAX_CACHED_PAIRS:
                    cache.clear()
                if encoded:  # a skipped attribute is skipped again next time, with its log line
                    cache[pair] = encoded
            append(encoded)
        return b"".join(out)

    # ------------------------------------------------------------------ resource and scope

    def _resource_field(self, resource: Any) -> bytes:
        """ResourceSpans.resource (1): Resource.attributes (1) only, as the stock encoder."""
        found = self._resources.get(id(resource))
        if found is not None and found[0] is resource:
            return found[1]
        encoded = _field(b"\x0a", self.attributes(b"\x0a", resource.attributes))
        if len(self._resources) >= MAX_CACHED_BLOCKS:
            self._resources.clear()
        self._resources[id(resource)] = (resource, encoded)  # the reference keeps the id from being reused
        return encoded

    def _scope_field(self, scope: Any) -> bytes:
        """ScopeSpans.scope (1): name (1), version (2), attributes (3); None: an empty scope."""
        if scope is None:
            return b"\x0a\x00"
        found = self._scopes.get(id(scope))
        if found is not None and found[0] is scope:
            return found[1]
        body = (
            _string_field(b"\x0a", scope.name)
            + _string_field(b"\x12", scope.version)
            + self.attributes(b"\x1a", scope.attributes)
        )
        encoded = _field(b"\x0a", body)
        if len(self._scopes) >= MAX_CACHED_BLOCKS:
            self._scopes.clear()
        self._scopes[id(scope)] = (scope, encoded)
        return encoded

    # ------------------------------------------------------------------ spans

    def _status_field(self, status: Any) -> bytes:
        """Span.status (15): message (2), code (3)."""
        if status is None:
            return b""
        code_member = status.status_code
        description = status.description
        if description is None:
            found = _STATUS_BY_ID.get(id(code_member))
            if found is not None:
                return found
        code = code_member.value
        key = (code, description)
        encoded = self._status.get(key)
        if encoded is None:
            body = _string_field(b"\x12", description) + (b"\x18" + _varint(code) if code else b"")
            encoded = _field(b"\x7a", body)
            if len(self._status) >= MAX_CACHED_PAIRS:
                self._status.clear()
            self._status[key] = encoded
        return encoded

    def span(self, span: ReadableSpan) -> bytes:
        """The Span message, fields in field-number order."""
        context: Any = span.get_span_context()
        parent = span.parent
        trace_id = context.trace_id
        trace_state = context.trace_state
        if trace_state:
            parts = [
                _PACK_IDS(0x0A10, trace_id >> 64, trace_id & _M64, 0x1208, context.span_id),
                _string_field(b"\x1a", ",".join([f"{k}={v}" for k, v in trace_state.items()])),
            ]
            if parent:
                parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        elif parent:
            high, low = trace_id >> 64, trace_id & _M64
            parts = [_PACK_IDS_PARENT(0x0A10, high, low, 0x1208, context.span_id, 0x2208, parent.span_id)]
        else:
            parts = [_PACK_IDS(0x0A10, trace_id >> 64, trace_id & _M64, 0x1208, context.span_id)]
        name = span.name
        if name:
            encoded = name.encode("utf-8")
            n = len(encoded)
            parts.append((b"\x2a" + _BYTE[n] if n < 0x80 else b"\x2a" + _varint(n)) + encoded)
        parts.append(_KIND_BY_ID[id(span.kind)])
        start, end = span.start_time, span.end_time
        if start and end:
            parts.append(_PACK_TIMES(0x39, start, 0x41, end))
        else:
            if start:
                parts.append(b"\x39" + _PACK_Q(start))
            if end:
                parts.append(b"\x41" + _PACK_Q(end))
        direct = _DIRECT.get(span.__class__)
        if direct is None:
            direct = _direct(span)
        parts.append(self.attributes(b"\x4a", span._attributes if direct else span.attributes))  # noqa: SLF001
        dropped = span.dropped_attributes
        if dropped:
            parts.append(_count(b"\x50", dropped))
        events = span._events if direct else span.events  # noqa: SLF001
        if events:
            for event in events:
                parts.append(self._event(event))
        dropped = span.dropped_events
        if dropped:
            parts.append(_count(b"\x60", dropped))
        links = span._links if direct else span.links  # noqa: SLF001
        if links:
            for link in links:
                parts.append(self._link(link))
        dropped = span.dropped_links
        if dropped:
            parts.append(_count(b"\x70", dropped))
        parts.append(self._status_field(span.status))
        parts.append(_FLAGS_REMOTE if parent and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(parts)

    def _event(self, event: Any) -> bytes:
        """Span.events (11): time_unix_nano (1), name (2), attributes (3), dropped_attributes_count (4)."""
        timestamp = event.timestamp
        body = (
            (b"\x09" + _PACK_Q(timestamp) if timestamp else b"")
            + _string_field(b"\x12", event.name)
            + self.attributes(b"\x1a", event.attributes)
        )
        dropped = event.dropped_attributes
        if dropped:
            body += _count(b"\x20", dropped)
        return _field(b"\x5a", body)

    def _link(self, link: Any) -> bytes:
        """Span.links (13): trace_id (1), span_id (2), attributes (4), dropped (5), flags (6); no
        trace_state, as the stock encoder."""
        context = link.context
        body = (
            b"\x0a\x10"
            + context.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + context.span_id.to_bytes(8, "big")
            + self.attributes(b"\x22", link.attributes)
        )
        dropped = link.dropped_attributes
        if dropped:
            body += _count(b"\x28", dropped)
        body += _LINK_FLAGS_REMOTE if context.is_remote else _LINK_FLAGS_LOCAL
        return _field(b"\x6a", body)

    # ------------------------------------------------------------------ the request

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ExportTraceServiceRequest of ``spans``, grouped by resource then scope as ``encode_spans``.

        The stock encoder groups in dicts keyed by the resource and the scope (equality, not
        identity: equal resources from different objects share one ResourceSpans, under the
        first one's encoding). So does this, once per distinct object, then by identity.
        """
        # canonical object per id, and per equality class (the first seen, as the stock dicts keep it)
        canon_resource: dict[int, Any] = {}
        equal_resources: dict[Any, Any] = {}
        canon_scope: dict[int, Any] = {}
        equal_scopes: dict[Any, Any] = {}
        # id(canonical resource) -> (resource, {id(canonical scope): (scope, [span bytes])})
        groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
        last_resource: Any = _NOTHING
        last_scope: Any = _NOTHING
        last_list: list[bytes] = []
        encode = self.span
        every = 0 if self.pause_s is None else self.pause_every
        pacer = _pause.pacer(self.pause_s) if every else None
        countdown = every + 1  # no pause before the first slice
        for span in spans:
            if pacer is not None:
                countdown -= 1
                if not countdown:  # let request threads waiting for the GIL run (pause_every, pause_s)
                    countdown = every
                    pacer.pause()
            resource = span.resource
            scope = span.instrumentation_scope or None
            if resource is not last_resource or scope is not last_scope:
                r = canon_resource.get(id(resource))
                if r is None:
                    r = canon_resource[id(resource)] = equal_resources.setdefault(resource, resource)
                s = canon_scope.get(id(scope), _NOTHING)
                if s is _NOTHING:
                    s = canon_scope[id(scope)] = equal_scopes.setdefault(scope, scope)
                group = groups.get(id(r))
                if group is None:
                    group = groups[id(r)] = (r, {})
                scopes = group[1]
                entry = scopes.get(id(s))
                if entry is None:
                    entry = scopes[id(s)] = (s, [])
                last_resource, last_scope, last_list = resource, scope, entry[1]
            last_list.append(encode(span))
        out = []
        for resource, scopes in groups.values():
            block = [self._resource_field(resource)]
            for scope, encoded in scopes.values():
                body = [self._scope_field(scope)]
                for one in encoded:
                    n = len(one)
                    body.append(b"\x12" + (_BYTE[n] if n < 0x80 else _varint(n)))
                    body.append(one)
                if scope is not None:
                    body.append(_string_field(b"\x1a", scope.schema_url))
                block.append(_field(b"\x12", b"".join(body)))
            block.append(_string_field(b"\x1a", resource.schema_url))
            out.append(_field(b"\x0a", b"".join(block)))
        return b"".join(out)


_NOTHING = object()


# ---------------------------------------------------------------------- the exporter


class FastOTLPSpanExporter(SpanExporter):
    """The SDK's OTLP/HTTP protobuf span exporter, with :class:`SpanEncoder` writing the bytes."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.wrapped = exporter
        self.encoder = SpanEncoder()
        self.fallbacks = 0  # batches sent down the stock path after an error in the encoder
        self.batches = 0  # batches encoded here

    @staticmethod
    def applies_to(exporter: Any) -> bool:
        return otlp_export_parts(exporter) is not None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        exporter: Any = self.wrapped
        if otlp_exporter_shut_down(exporter):  # the stock export() says so and refuses
            return exporter.export(spans)  # type: ignore[no-any-return]
        try:
            data = self.encoder.encode(spans)
        except Exception as exc:  # noqa: BLE001 - never lose the batch: the stock path sends it
            self.fallbacks += 1
            result = exporter.export(spans)
            # under pytest, re-raised after the batch went out
            internal_error("otlp encoder", exc, "that batch was encoded by the SDK's encoder instead")
            return result  # type: ignore[no-any-return]
        self.batches += 1
        return self._send(exporter, len(spans), data)

    @staticmethod
    def _send(exporter: Any, count: int, data: bytes) -> SpanExportResult:
        """The rest of the stock ``export()`` (1.45.1), with our bytes: the same logs, metrics and client."""
        from opentelemetry.exporter.otlp.proto.http._common import RequestPayloadTooLargeError, _is_request_too_large
        from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

        parts = otlp_export_parts(exporter)
        if parts is None:  # checked when the exporter was wrapped: not expected
            raise RuntimeError("the OTLP exporter no longer has what FastOTLPSpanExporter sends through")
        client, metrics, limit = parts
        sdk_log = logging.getLogger(type(exporter).__module__)
        with metrics.export_operation(count) as result:
            if _is_request_too_large(data, limit):
                sdk_log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(data),
                    limit,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(data)} bytes exceeds max_request_size {limit} bytes."
                )
                return SpanExportResult.FAILURE
            sent = client.export(data)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: sent.status_code} if sent.status_code is not None else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.wrapped.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.wrapped.force_flush(timeout_millis)


def fast_exporter(exporter: SpanExporter, mode: str) -> SpanExporter:
    """``exporter`` itself, or wrapped in :class:`FastOTLPSpanExporter` when ``mode`` is ``fast`` and it
    is the SDK's OTLP/HTTP protobuf span exporter as checked."""
    if mode == "fast" and FastOTLPSpanExporter.applies_to(exporter):
        _log.debug("otel-dbperf: spans are encoded by otel-dbperf's OTLP encoder (DBPERF_OTLP_ENCODER=fast)")
        return FastOTLPSpanExporter(exporter)
    return exporter


__all__ = ["FastOTLPSpanExporter", "SpanEncoder", "fast_exporter"]
