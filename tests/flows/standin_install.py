"""TEMPORARY: register the stand-in as connectors.clickhouse(+_schema) when missing."""

import importlib.util
import sys

if importlib.util.find_spec("connectors.clickhouse") is None:
    from tests.flows import standin_clickhouse as s

    sys.modules["connectors.clickhouse"] = s
    sys.modules["connectors.clickhouse_schema"] = s
