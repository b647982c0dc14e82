"""Writes docker/k8s/configmap.yaml from docker/config/otelwax.yaml with in-cluster addresses.

The compose file and the ConfigMap then carry the same settings; tests/docker/test_k8s.py fails
when configmap.yaml is not what this script writes. Run after editing docker/config:

    python docker/k8s/build_configmap.py
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "config" / "otelwax.yaml"
TARGET = HERE / "configmap.yaml"

# compose address -> the Service a cluster would have (edit configmap.yaml's copy to yours)
ADDRESSES = [
    ("kafka:9092", "kafka-bootstrap.kafka.svc:9092"),
    ("host: clickhouse\n", "host: clickhouse.clickhouse.svc\n"),
    ("http://prometheus:9090", "http://prometheus.monitoring.svc:9090"),
    ("create_schema: true", "create_schema: false"),
]
# Jaeger is not part of these manifests: the traces flow's jaeger_tee operator is left out
# (it would block the flow while no Jaeger answers).
JAEGER_OPERATOR = re.compile(r"    operators:\n      # Every stored span.*?\n(?=  \w)", re.S)

HEADER = """\
# The otelwax config for the cluster, mounted at /etc/otelwax by the shim and the flows:
# docker/config/otelwax.yaml with in-cluster addresses, written by build_configmap.py. Point
# Kafka, ClickHouse and Prometheus at your services. Tables: run `otelwax clickhouse init`
# once (see docker/README.md). To export spans to Jaeger too, add the jaeger_tee operator to
# flows.traces as in docker/config/otelwax.yaml.
# Secrets are not here: see secret.yaml (OTELWAX_CLICKHOUSE_PASSWORD, OTELWAX_INGEST_TOKEN).
apiVersion: v1
kind: ConfigMap
metadata:
  name: otelwax-config
  namespace: otelwax
  labels:
    app.kubernetes.io/part-of: otelwax
data:
  otelwax.yaml: |
"""


def render() -> str:
    """The text of configmap.yaml."""
    text = SOURCE.read_text()
    text = text.replace(
        "for the compose stack: docker/config/ is mounted at /etc/otelwax.",
        "for Kubernetes (ConfigMap otelwax-config, mounted at /etc/otelwax).",
    )
    text = text.replace(
        "# docker/k8s/configmap.yaml holds the same settings with in-cluster addresses.\n", ""
    )
    text = JAEGER_OPERATOR.sub("", text)
    for compose, cluster in ADDRESSES:
        text = text.replace(compose, cluster)
    body = "".join(("    " + line if line.strip() else "\n") for line in text.splitlines(True))
    return HEADER + body


def main() -> None:
    TARGET.write_text(render())


if __name__ == "__main__":
    main()
