"""Kafka conventions shared by the shim and the flows.

Topic names, record keys and encoding follow the OpenTelemetry Collector's kafkaexporter
(``otlp_proto`` encoding) so either side can be swapped for the Collector.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, ClassVar, Literal

from pydantic import Field

from otelwax.settings import StrictModel, secret_keys

TOPIC_SPANS = "otlp_spans"
TOPIC_METRICS = "otlp_metrics"
TOPIC_LOGS = "otlp_logs"
TOPIC_DLQ = "otlp_dlq"
DEFAULT_TOPICS = (TOPIC_SPANS, TOPIC_METRICS, TOPIC_LOGS, TOPIC_DLQ)
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

# Header names written by the shim next to each record (the Collector writes none by default,
# so readers must treat them as optional).
HEADER_CONTENT_TYPE = "content-type"
HEADER_INGEST_TIME = "otelwax-ingest-time-ns"
CONTENT_TYPE_PROTO = b"application/x-protobuf"
# librdkafka properties holding secrets (sasl.password, ssl.key.password, ssl.keystore.password,
# sasl.oauthbearer.client.secret, ssl.key.pem, ...): only from the environment.
SECRET_PROPERTIES = (
    r"password|secret|passphrase|private\.key|^ssl\.key\.pem$|^sasl\.oauthbearer\.config$"
)


class KafkaConfig(StrictModel):
    """Connection settings shared by producers, consumers and the admin client."""

    other_names: ClassVar[dict[str, tuple[str, str]]] = {
        "brokers": ("bootstrap_servers", "the Collector's name for it"),
    }
    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    extra: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="Raw librdkafka properties merged last; secret ones (sasl.password, ...) "
        "only as ${env:VAR}",
        json_schema_extra=secret_keys(SECRET_PROPERTIES),
    )

    connect_timeout_s: float = Field(
        10.0, gt=0, le=300, description="how long a flow waits for Kafka's metadata at start"
    )

    def client_conf(self) -> dict[str, str | int | bool]:
        """librdkafka properties common to every client."""
        conf: dict[str, str | int | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        conf.update(self.extra)
        return conf


class _RepeatFilter(logging.Filter):
    """Lets the first of a kind of librdkafka message through per ``window_s``; the next one
    after the window says how many were held back. A broker that is down makes librdkafka log
    the same connect failure ~20 times a second per client."""

    def __init__(self, window_s: float = 60.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        fac = str(args[0]) if args else ""
        text = re.sub(r"\d+", "N", str(args[-1]) if args else record.getMessage())
        now = time.monotonic()
        with self._lock:
            first, held = self._seen.get((fac, text), (0.0, 0))
            if first and now - first < self.window_s:
                self._seen[(fac, text)] = (first, held + 1)
                return False
            self._seen[(fac, text)] = (now, 0)
            if len(self._seen) > 1000:  # bounded: forget the oldest kinds
                for k in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[k]
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.window_s:g} s)"
        return True


LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
LIBRDKAFKA_LOG.addFilter(_RepeatFilter())


def quiet(conf: dict[str, Any]) -> dict[str, Any]:
    """``conf`` with librdkafka's log lines sent through Python logging (logger
    ``librdkafka``), where repeats are rate-limited, instead of straight to stderr."""
    return {**conf, "logger": LIBRDKAFKA_LOG}


def wait_ready(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until the broker answers a metadata request, or raise TimeoutError."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(
                timeout=2
            )
            if md.brokers:
                return
        except Exception as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"Kafka at {bootstrap} not ready after {timeout}s: {last}")


def create_topics(
    bootstrap: str, topics: tuple[str, ...] | list[str], partitions: int = 4, timeout: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [
        NewTopic(t, num_partitions=partitions, replication_factor=1)
        for t in topics
        if t not in existing
    ]
    if not new:
        return []
    _wait_all(admin.create_topics(new, operation_timeout=timeout), "TOPIC_ALREADY_EXISTS")
    # Wait until metadata shows every partition with a leader.
    deadline = time.monotonic() + timeout
    names = [t.topic for t in new]
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout).topics
        if all(n in md and len(md[n].partitions) == partitions for n in names):
            break
        time.sleep(0.2)
    return names


def delete_topics(bootstrap: str, topics: list[str], timeout: float = 30.0) -> None:
    """Delete topics, ignoring the ones that do not exist."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    _wait_all(admin.delete_topics(topics, operation_timeout=timeout), "UNKNOWN_TOPIC")


def _wait_all(futures: dict[str, Any], harmless: str) -> None:
    """Wait for every admin future; an error whose text names ``harmless`` is ignored."""
    for fut in futures.values():
        try:
            fut.result()
        except Exception as exc:
            if harmless not in str(exc):
                raise


def describe_topic_id(kafka: KafkaConfig, topic: str) -> str:
    """``topic``'s id from the broker (AdminClient.describe_topics), "" when unavailable."""
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(quiet(kafka.client_conf()))
    try:
        fut = admin.describe_topics(TopicCollection([topic]), request_timeout=30)[topic]
        topic_id = fut.result().topic_id
    except Exception as exc:  # older brokers; a missing topic fails in list_parts/consume
        logging.getLogger(__name__).warning(
            "kafka %s: no topic id (%s): recreation shows by offsets only", topic, exc
        )
        return ""
    return str(topic_id) if topic_id is not None else ""


def watermarks(consumer: Any, tp: Any, wait_s: float = 60.0) -> tuple[int, int]:
    """(low, high) offsets of ``tp`` from the broker, waiting up to ``wait_s`` while the
    broker cannot say yet (restarting, leader not elected, metadata not loaded), so a flow
    started during a broker restart waits instead of crashing."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + wait_s
    warned = False
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=min(10.0, wait_s))
            return int(low), int(high)
        except KafkaException as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"kafka {tp.topic}[{tp.partition}]: no offsets from the broker after "
                    f"{wait_s:.0f} s: {exc.args[0].str() if exc.args else exc}"
                ) from exc
            if not warned:
                logging.getLogger(__name__).warning(
                    "kafka %s[%d]: %s; waiting for the broker",
                    tp.topic, tp.partition, exc.args[0].str() if exc.args else exc,
                )  # fmt: skip
                warned = True
            time.sleep(1.0)

