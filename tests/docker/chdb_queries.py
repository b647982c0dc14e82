"""Runs SQL in a fresh chdb session on the otelwax tables; used by test_grafana.py.

    python chdb_queries.py DATA_DIR [TABLE_OPTIONS_JSON] < queries.json
        ->   {"results": [...], "errors": [...]}

A separate process, because chdb allows one data path per process and other tests use theirs.
The tables come from connectors.clickhouse_schema (the DDL the sinks use), with one span and
one log record inserted so that queries return something (INSERT ... SELECT: a map literal
becomes a JSON object in json-mode tables).
"""

from __future__ import annotations

import json
import sys

from chdb import session

from connectors.clickhouse_schema import TableOptions, schema_ddl

SEED = [
    "INSERT INTO otel.otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind,"
    " ServiceName, Duration, StatusCode, SpanAttributes, ResourceAttributes) SELECT"
    " now64(9) - 60, 'abc', '01', '', 'GET /cart', 'SPAN_KIND_SERVER', 'checkout', 5000000,"
    " 'STATUS_CODE_ERROR', map('http.method', 'GET'), map('service.name', 'checkout')",
    "INSERT INTO otel.otel_logs (Timestamp, TraceId, SpanId, SeverityText, SeverityNumber,"
    " ServiceName, Body) VALUES (now64(9) - 60, 'abc', '01', 'ERROR', 17, 'checkout',"
    " 'payment failed')",
]


def main() -> int:
    queries = json.load(sys.stdin)
    s = session.Session(sys.argv[1])
    opts = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    opts = TableOptions.model_validate({"variant": "modern", **opts})
    for sql in schema_ddl("otel", "otel_traces", "otel_logs", opts, text_index=True):
        s.query(sql)
    for sql in SEED:
        s.query(sql)
    results, errors = [], []
    for q in queries:
        try:
            out = s.query(q, "JSON")
            results.append(json.loads(out.bytes() or b'{"data": []}')["data"])
            errors.append(None)
        except Exception as exc:
            results.append(None)
            errors.append(str(exc)[:600])
    json.dump({"results": results, "errors": errors}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
