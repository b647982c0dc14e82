"""A small stateful dataflow for the cluster test (tests/docker/test_k8s.py): 200 numbers,
a running sum per key, printed as ``key=value`` lines."""

from __future__ import annotations

from bytewax import operators as op
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource


def _add(total: int | None, x: int) -> tuple[int, int]:
    total = (total or 0) + x
    return total, total


flow = Dataflow("otelwax_cluster_check")
nums = op.input("numbers", flow, TestingSource(range(200)))
keyed = op.key_on("key", nums, lambda x: str(x % 4))
sums = op.stateful_map("sum", keyed, _add)
op.output("out", op.map("fmt", sums, lambda kv: f"{kv[0]}={kv[1]}"), StdOutSink())
