"""Where the memory of ``flows.traces`` goes while it drains a Kafka backlog.

One topic is filled once with ``--spans`` spans (``tests.otlpgen`` requests of 100 spans,
generated in chunks of ``--pool`` distinct requests and produced repeatedly), then each
variant drains it from the start with a fresh flow name and store (``stop_at_end``). Variants
run interleaved, ``--repeat`` times; the median spans/s and the peak memory are reported.

The flow runs inside a probe (``probe`` sub-command: this file as a wrapper around
``bytewax.run``) that samples every 0.2 s, from inside the process:

- ``/proc/self/smaps_rollup``: RSS, anonymous, file-backed (chdb's mapped library);
- glibc malloc (``mallinfo2``: arenas + mmapped chunks in use; the native codec's Arrow
  buffers and librdkafka's buffers live there), the Arrow memory pool
  (``pyarrow.total_allocated_bytes``: sort copies, chdb conversions);
- librdkafka's prefetch queues (``fetchq_size`` from its statistics, summed over partitions),
  the payload bytes the source holds (buffered + emitted and not yet stored);
- the process's CPU seconds (all threads), so throughput is also reported per CPU-second
  (spans / CPU-s while draining), which a loaded machine disturbs far less than spans/s;
- PSS beside RSS: chdb's library pages are shared with every other process that maps it.

``--backlog-5m`` drains the goal's 5M-span backlog (minutes per run); ``--private-chdb`` gives
the flows a copy of chdb of their own, as on a dedicated host (on a shared machine other
processes map the same library, so its pages are neither reclaimable by the flow nor its own).

    .venv/bin/python bench/flow_memory_bench.py --spans 2000000 --target chdb server \\
        --variant base= --variant 'small=source.max_inflight_bytes=33554432;MALLOC_ARENA_MAX=2'

Not a test: no thresholds. Writes ``bench/results/flow_memory.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOOTSTRAP = os.environ.get("OTELWAX_TEST_KAFKA", "127.0.0.1:19092")
MIB = 2**20


# --- the probe (inside the flow process) -------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _smaps() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (utime + stime of /proc/self/stat)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_thread(seen: dict[str, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by kind of thread: ``cpu_rdk`` librdkafka's, ``cpu_py`` Python's (the
    bytewax worker, the sink's writer), ``cpu_chdb`` the rest (chdb's pools, jemalloc).
    ``seen`` keeps each thread's last count, so threads that ended still count (up to their
    last look)."""
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                name = fh.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        kind = "rdk" if name.startswith("rdk:") else "py" if name.startswith("python") else "chdb"
        seen[tid] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    out = {"cpu_rdk": 0.0, "cpu_py": 0.0, "cpu_chdb": 0.0}
    for kind, cpu in seen.values():
        out[f"cpu_{kind}"] += cpu
    return out


def _dump_anon_mappings(path: str) -> None:
    """The 40 largest resident mappings (anonymous and file) of this process, with glibc's
    arena statistics (``malloc_info``), to ``path``."""
    maps, cur = [], None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(a, 16) for a in head[0].split("-"))
                cur = {"size": (hi - lo) >> 10, "perm": head[1], "name": " ".join(head[5:])}
                maps.append(cur)
            elif cur is not None and head[0] in ("Rss:", "Anonymous:"):
                cur[head[0].rstrip(":")] = int(head[1])
    maps.sort(key=lambda m: -m.get("Rss", 0))
    with open(path, "w") as fh:
        for m in maps[:40]:
            fh.write(json.dumps(m) + "\n")
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    f = libc.fopen((path + ".malloc").encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(f))
    libc.fclose(ctypes.c_void_p(f))


_JE_LINE = re.compile(
    r"Allocated: (\d+), active: (\d+), metadata: (\d+).*?resident: (\d+), mapped: (\d+), "
    r"retained: (\d+)"
)


def _thread_sps() -> dict[int, str]:
    """Each thread's stack pointer (``/proc/self/task/*/syscall``, 0 if running) -> its name."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/syscall") as fh:
                f = fh.read().split()
            with open(f"/proc/self/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue
        if len(f) >= 3 and f[0] != "running":
            out[int(f[-2], 16)] = name
    return out


def _by_mapping(lib: str) -> dict[str, int]:
    """Resident bytes by kind of mapping (``/proc/self/smaps``): the chdb library's file pages
    and its anonymous (relocated, written) pages, other files, the brk heap, thread stacks
    (mappings holding a thread's stack pointer), other anonymous mappings (allocators)."""
    sps = sorted(_thread_sps())
    out = dict.fromkeys(
        ("lib_file", "lib_anon", "files", "heap", "stacks", "anon_other", "n_anon_maps"), 0
    )
    cur, per_file = None, {}
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(a, 16) for a in head[0].split("-"))
                name = " ".join(head[5:])
                cur = {"name": name, "lo": lo, "hi": hi}
            elif cur is not None and head[0] == "Rss:":
                cur["rss"] = int(head[1]) << 10
            elif cur is not None and head[0] == "Anonymous:":
                rss, anon, name = cur["rss"], int(head[1]) << 10, cur["name"]
                if name == lib:
                    out["lib_file"] += rss - anon
                    out["lib_anon"] += anon
                elif name == "[heap]":
                    out["heap"] += rss
                elif any(cur["lo"] <= sp < cur["hi"] for sp in sps) or name == "[stack]":
                    out["stacks"] += rss
                elif name.startswith("/"):
                    out["files"] += rss - anon
                    out["anon_other"] += anon
                    base = os.path.basename(name)
                    per_file[base] = per_file.get(base, 0) + rss - anon
                else:
                    out["anon_other"] += rss
                    out["n_anon_maps"] += 1 if rss else 0
                cur = None
    names: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    out["threads"] = sum(names.values())
    out["thread_names"] = names  # type: ignore[assignment]
    top = sorted(per_file.items(), key=lambda kv: -kv[1])[:6]
    out["top_files_mib"] = {k: round(v / MIB) for k, v in top}  # type: ignore[assignment]
    return out


def probe(out_path: str, argv: list[str]) -> None:
    """Run ``bytewax.run argv`` in this process with a sampler thread writing JSON lines."""
    import runpy

    import confluent_kafka
    import pyarrow as pa

    import connectors.kafka_source as ks
    from connectors.kafka_ranges import RangeAcks

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    acks: weakref.WeakSet = weakref.WeakSet()
    parts: weakref.WeakSet = weakref.WeakSet()
    fetchq: dict[str, int] = {}

    init_acks = RangeAcks.__init__

    def acks_init(self: RangeAcks) -> None:
        init_acks(self)
        acks.add(self)

    RangeAcks.__init__ = acks_init  # type: ignore[method-assign]
    # Ranges emitted: an insert each, so smaller ranges (a slower, loaded run cuts them by
    # age) cost CPU per span of their own; reported to tell that from the variant's cost.
    emitted = RangeAcks.emitted
    n_ranges = [0, 0]  # all, and those cut at >= 15 MiB (source.batch.max_bytes: 16 MiB)

    def count_emitted(self: RangeAcks, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        n_ranges[0] += 1
        n_ranges[1] += a[3] >= 15 * MIB  # (topic, partition, first, nbytes, last)
        emitted(self, *a, **kw)

    RangeAcks.emitted = count_emitted  # type: ignore[method-assign]
    init_part = ks._RangePartition.__init__

    def part_init(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        init_part(self, *a, **kw)
        parts.add(self)

    ks._RangePartition.__init__ = part_init  # type: ignore[method-assign]
    real_consumer = confluent_kafka.Consumer

    def stats_cb(text: str) -> None:
        st = json.loads(text)
        for t in st.get("topics", {}).values():
            for p, ps in t.get("partitions", {}).items():
                if p != "-1":
                    fetchq[f"{st.get('name')}/{p}"] = int(ps.get("fetchq_size", 0))

    def consumer(conf: dict) -> object:
        return real_consumer({**conf, "statistics.interval.ms": 500, "stats_cb": stats_cb})

    confluent_kafka.Consumer = consumer  # type: ignore[misc,assignment]
    t0 = time.monotonic()
    stop = threading.Event()
    # What-if knobs of the probe itself (to attribute memory before changing code).
    if os.environ.get("PROBE_MMAP_THRESHOLD"):
        libc.mallopt(-3, int(os.environ["PROBE_MMAP_THRESHOLD"]))  # M_MMAP_THRESHOLD
    if os.environ.get("PROBE_TRIM_THRESHOLD"):
        libc.mallopt(-1, int(os.environ["PROBE_TRIM_THRESHOLD"]))  # M_TRIM_THRESHOLD
    trim = bool(os.environ.get("PROBE_TRIM"))
    release = bool(os.environ.get("PROBE_ARROW_RELEASE"))
    if os.environ.get("PROBE_CHDB_SETTINGS"):  # "name:value/name:value": chdb server settings
        from connectors.clickhouse_embedded import CHDB_SERVER_SETTINGS

        for item in os.environ["PROBE_CHDB_SETTINGS"].split("/"):
            k, _, v = item.partition(":")
            CHDB_SERVER_SETTINGS[k] = int(v)
    if os.environ.get("PROBE_TABLE_SETTINGS"):  # "name:value/...": MergeTree settings, new tables
        import connectors.clickhouse_schema as schema

        extra = ", ".join(
            f"{k} = {int(v)}"
            for k, _, v in (i.partition(":") for i in os.environ["PROBE_TABLE_SETTINGS"].split("/"))
        )
        real_settings = schema._settings
        schema._settings = lambda *a, **kw: f"{real_settings(*a, **kw)}, {extra}"  # type: ignore[assignment]
    pageout_every = int(os.environ.get("PROBE_PAGEOUT_S", 0)) * 5  # in samples
    # Once, this many seconds in: page out every file mapped read-only (not only chdb's)
    pageout_all_at = float(os.environ.get("PROBE_PAGEOUT_ALL_AT", 0)) or None
    chdb_mem = {"v": 0}
    je = {"je_resident": 0, "je_allocated": 0, "je_metadata": 0, "je_retained": 0}

    purge_s = float(os.environ.get("PROBE_JE_PURGE_S", 0))

    def chdb_tracked(purge: bool = False) -> int:
        from connectors.clickhouse_embedded import _ChdbEngine

        eng = _ChdbEngine._instance
        # Waits for a running insert (holding the lock): a look between inserts, not a stale one
        if eng is None or not eng.lock.acquire(timeout=5):
            return chdb_mem["v"]
        try:
            if purge:  # chdb's jemalloc: hand its dirty pages back now
                eng.session.query("SYSTEM JEMALLOC PURGE")
            res = eng.session.query(
                "SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'", "CSV"
            )
            chdb_mem["v"] = int(str(res).strip() or 0)
            stats = eng.session.query("SELECT stats FROM system.jemalloc_stats", "TSV")
            m = _JE_LINE.search(str(stats))
            if m:
                al, _ac, md, rs, _mp, rt = (int(x) for x in m.groups())
                je.update(je_resident=rs, je_allocated=al, je_metadata=md, je_retained=rt)
        except Exception:
            pass
        finally:
            eng.lock.release()
        return chdb_mem["v"]

    def chdb_poll() -> None:  # chdb's own numbers, once a second (or at the purge interval)
        every = min(purge_s, 1.0) if purge_s else 1.0
        last_purge = time.monotonic()
        while not stop.wait(every):
            purge = bool(purge_s) and time.monotonic() - last_purge >= purge_s - 0.01
            if purge:
                last_purge = time.monotonic()
            chdb_tracked(purge)

    threading.Thread(target=chdb_poll, daemon=True).start()
    detail: dict = {"rss": 0, "at": -10.0}

    def sample() -> None:
        nonlocal pageout_all_at
        with open(out_path, "w") as fh, open(out_path + ".detail", "w") as dfh:
            n = 0
            threads: dict[str, tuple[str, float]] = {}
            by_thread = _cpu_by_thread(threads)
            while not stop.wait(0.2):
                n += 1
                if n % 5 == 0:  # once a second: ~50 threads, two reads each
                    by_thread = _cpu_by_thread(threads)
                if trim:
                    libc.malloc_trim(0)
                if release:
                    pa.default_memory_pool().release_unused()
                if pageout_every and n % pageout_every == 0 and "chdb._chdb" in sys.modules:
                    from otelwax.memory import page_out_file

                    page_out_file(sys.modules["chdb._chdb"].__file__)
                if pageout_all_at is not None and time.monotonic() - t0 >= pageout_all_at:
                    from otelwax.memory import page_out_file

                    pageout_all_at = None
                    with open("/proc/self/maps") as mf:
                        files = {ln.split()[5] for ln in mf if len(ln.split()) == 6}
                    for f in files:
                        if f.startswith("/"):
                            page_out_file(f)
                s = _smaps()
                mi = libc.mallinfo2()
                rec = {
                    "t": round(time.monotonic() - t0, 2),
                    "cpu": _cpu_s(),
                    "rss": s.get("Rss", 0),
                    "pss": s.get("Pss", 0),
                    "anon": s.get("Anonymous", 0),
                    "file": s.get("Rss", 0) - s.get("Anonymous", 0),
                    "malloc": mi.uordblks + mi.hblkhd,
                    "malloc_free": mi.fordblks,
                    "arrow": pa.total_allocated_bytes(),
                    "fetchq": sum(fetchq.values()),
                    "inflight": sum(a.inflight_bytes for a in list(acks)),
                    "buffered": sum(p._nbytes for p in list(parts)),
                    "chdb": chdb_mem["v"],
                    "ranges": n_ranges[0],
                    "ranges_full": n_ranges[1],
                    **by_thread,
                }
                rec.update(je)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                # By mapping at each new peak (at most once a second: smaps costs ~10 ms)
                if rec["rss"] > detail["rss"] + (4 << 20) and rec["t"] - detail["at"] >= 1:
                    lib = sys.modules.get("chdb._chdb")
                    lib = os.path.realpath(lib.__file__) if lib else ""
                    detail.update(rss=rec["rss"], at=rec["t"])
                    dfh.write(json.dumps({**rec, **_by_mapping(lib)}) + "\n")
                    dfh.flush()

    threading.Thread(target=sample, daemon=True).start()
    sys.argv = ["bytewax.run", *argv]
    try:
        runpy.run_module("bytewax.run", run_name="__main__")
    finally:
        stop.set()
        if os.environ.get("PROBE_MAPS_AT_END"):  # where the anonymous memory is at the end
            where = os.environ["PROBE_MAPS_AT_END"]
            _dump_anon_mappings(os.path.join(where, Path(out_path).stem + ".maps"))


# --- the driver --------------------------------------------------------------------------------


def produce(topic: str, spans: int, pool: int) -> int:
    from confluent_kafka import Producer

    from tests import otlpgen

    p = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20, "compression.type": "lz4"})
    payloads = otlpgen.trace_payloads(pool, seed=1)
    n_req = spans // 100
    for i in range(n_req):
        while True:
            try:
                p.produce(topic, value=payloads[i % pool], key=b"%032x" % i)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)
    return n_req * 100


def _records(topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"membench-count-{uuid.uuid4()}"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        marks = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts]
        return sum(hi - lo for lo, hi in marks)
    finally:
        c.close()


def _set(cfg: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    d = cfg
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    try:
        d[keys[-1]] = json.loads(value)
    except json.JSONDecodeError:
        d[keys[-1]] = value


def run_one(
    topic: str,
    target: str,
    overrides: list[str],
    env: dict,
    tmp: Path,
    server: str,
    timeout_s: float = 600,
    pythonpath: str = "",
) -> dict:
    import yaml

    env = dict(env)
    name = uuid.uuid4().hex[:8]
    if target == "chdb":
        ch = {"mode": "embedded", "path": str(tmp / f"chdb-{name}"), "create_schema": True}
    else:
        host, native, http = server.split(":")
        ch = {
            "mode": "server",
            "host": host,
            "port": int(native),
            "http_port": int(http),
            "database": f"membench_{name}",
            "create_schema": True,
        }
    cfg: dict = {
        "kafka": {"bootstrap_servers": BOOTSTRAP},
        "source": {"topic": topic, "stop_at_end": True, "group_id": f"membench-{name}"},
        "clickhouse": ch,
        "metrics_port": None,
        "dead_letters": {"topic": f"dlq_{topic}"},
        "sink": {"flow": f"mb{name}"},
    }
    for o in overrides:
        k, _, v = o.partition("=")
        _set(cfg, k, v)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    samples = tmp / f"{name}.jsonl"
    log = tmp / f"{name}.log"
    tree = env.pop("TREE", str(ROOT))  # another checkout's code (before/after runs)
    args = [sys.executable, __file__, "probe", str(samples), "--"]
    args += [f"flows.traces:build({str(path)!r})", "-w", "1"]
    t = time.monotonic()
    with open(log, "wb") as fh:
        p = subprocess.Popen(
            args,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": tree + pythonpath, **env},
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = -9
    wall = time.monotonic() - t
    if target == "server":  # the run's rows are not needed: leave the shared server as it was
        q = urllib.parse.urlencode({"query": f"DROP DATABASE IF EXISTS {ch['database']}"})
        urllib.request.urlopen(f"http://{host}:{http}/?{q}", data=b"", timeout=60).close()
    text = log.read_text(errors="replace")
    if rc:
        raise RuntimeError(f"flow exited with {rc}:\n{text[-3000:]}")
    rows = [json.loads(x) for x in samples.read_text().splitlines() if x.strip()]
    keys = [k for k in rows[0] if k not in ("t", "cpu") and not k.startswith("cpu_")]
    peak = {k: max((r[k] for r in rows), default=0) for k in keys}
    at_peak = max(rows, key=lambda r: r["rss"])
    busy = [r for r in rows if r["buffered"] or r["inflight"] or r["fetchq"]]
    drain = (busy[-1]["t"] - busy[0]["t"]) if len(busy) > 1 else wall
    # CPU of the whole process (all threads) while it drained: startup and imports excluded.
    cpu = (busy[-1]["cpu"] - busy[0]["cpu"]) if len(busy) > 1 else rows[-1]["cpu"]
    raw = ("t", "cpu", "ranges", "ranges_full", "cpu_rdk", "cpu_py", "cpu_chdb")  # not bytes
    series = [{k: (v if k in raw else round(v / MIB)) for k, v in r.items()} for r in rows[::5]]
    drained = sorted(r["rss"] for r in busy) or [0]  # RSS over the drain: the steady state
    dpath = Path(str(samples) + ".detail")
    details = [json.loads(x) for x in dpath.read_text().splitlines() if x.strip()]
    return {
        "wall_s": round(wall, 1),
        "drain_s": drain,
        "cpu_s": round(cpu, 2),
        # over the drain, by kind of thread (see _cpu_by_thread; 0 from older probes)
        "cpu_by_thread": {
            k: round(busy[-1].get(k, 0) - busy[0].get(k, 0), 2) if len(busy) > 1 else 0
            for k in ("cpu_rdk", "cpu_py", "cpu_chdb")
        },
        "rss_median_mib": round(statistics.median(drained) / MIB),
        "rss_p90_mib": round(drained[int(0.9 * (len(drained) - 1))] / MIB),
        "peak": peak,
        "at_peak_rss": at_peak,
        "peak_by_mapping": details[-1] if details else {},
        "series_mib": series,
    }


def _private_chdb(tmp: Path) -> str:
    """A copy of the installed chdb (and its bundled libraries) under ``tmp``; returns the
    folder to put on the flows' PYTHONPATH."""
    import chdb

    site = Path(chdb.__file__).parents[1]
    dest = tmp / "private-chdb"
    for name in ("chdb", "chdb_core.libs"):
        if (site / name).exists():
            shutil.copytree(site / name, dest / name)
    return str(dest)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "probe":
        sys.path[0] = os.getcwd()  # the checkout under test (TREE), not this file's
        sep = sys.argv.index("--")
        probe(sys.argv[2], sys.argv[sep + 1 :])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--pool", type=int, default=2000, help="distinct requests (100 spans each)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--topic", help="reuse a filled topic (not deleted)")
    ap.add_argument("--target", nargs="+", default=["chdb"], choices=["chdb", "server"])
    ap.add_argument("--server", default="127.0.0.1:19000:18123", help="host:native:http")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=dotted.key=json&...[;ENV=VALUE,...]: config overrides (and env) of a variant",
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--backlog-5m",
        action="store_true",
        help="the goal's backlog: 5M spans (overrides --spans; each run takes minutes)",
    )
    ap.add_argument(
        "--private-chdb",
        action="store_true",
        help="flows load a private copy of chdb, as on a host of their own: the library's "
        "file pages are then not shared with other processes (which PSS splits and "
        "MADV_PAGEOUT skips)",
    )
    ap.add_argument("--keep-topic", action="store_true")
    args = ap.parse_args()
    from connectors.kafka import create_topics, delete_topics

    variants = []
    for v in args.variant or ["defaults="]:
        name, _, rest = v.partition("=")
        cfg_part, _, env_part = rest.partition(";")
        overrides = [o for o in cfg_part.split("&") if o]
        # ENV=VALUE pairs split at commas before the next NAME=, so values may hold commas
        # (JE_MALLOC_CONF=dirty_decay_ms:300,narenas:1)
        pairs = re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", env_part)
        env = dict(e.split("=", 1) for e in pairs if e)
        variants.append((name, overrides, env))  # env TREE=path: run that checkout
    topic = args.topic or f"membench_{uuid.uuid4().hex[:8]}"
    spans = 5_000_000 if args.backlog_5m else args.spans
    if not args.topic:
        create_topics(BOOTSTRAP, [topic, f"dlq_{topic}"], partitions=args.partitions)
        t = time.monotonic()
        spans = produce(topic, spans, args.pool)
        print(f"produced {spans} spans into {topic} in {time.monotonic() - t:.0f} s", flush=True)
    else:  # a reused topic: its records (100 spans each), not --spans, are what a run drains
        spans = 100 * _records(topic)
    if "server" in args.target:  # started if not running (as traces_flow_bench.py does)
        subprocess.run(
            [str(ROOT / "scripts/services/clickhouse.sh"), "start"], check=True, capture_output=True
        )
    results: dict[str, list[dict]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="otelwax-mem-bench-") as d:
            pythonpath = os.pathsep + _private_chdb(Path(d)) if args.private_chdb else ""
            timeout_s = max(600.0, spans / 2000)  # 2K spans/s: a stuck flow, not a slow one
            for _ in range(args.repeat):
                for target in args.target:
                    for name, overrides, env in variants:
                        r = run_one(
                            topic, target, overrides, env, Path(d), args.server, timeout_s,
                            pythonpath,
                        )  # fmt: skip
                        r["spans_per_s"] = round(spans / r["drain_s"])
                        r["spans_per_cpu_s"] = round(spans / max(r["cpu_s"], 0.01))
                        key = f"{target} {name}"
                        results.setdefault(key, []).append(r)
                        mib = {
                            k: (v if k.startswith("ranges") else round(v / MIB))
                            for k, v in r["peak"].items()
                        }
                        at = r["at_peak_rss"]
                        at = {
                            k: round(v / MIB)
                            for k, v in at.items()
                            if k not in ("t", "cpu") and not k.startswith(("ranges", "cpu_"))
                        }
                        print(
                            f"{key:<24} {r['spans_per_s']:>7} sp/s {r['spans_per_cpu_s']:>7} "
                            f"sp/cpu-s RSS median/p90 {r['rss_median_mib']}/{r['rss_p90_mib']} "
                            f"peak {mib}",
                            flush=True,
                        )
                        print(f"{'':<24} {'':>7}      at peak RSS {at}", flush=True)
                        bm = r["peak_by_mapping"]
                        bm = {
                            k: (v if k in ("t", "threads", "n_anon_maps") else round(v / MIB))
                            for k, v in bm.items()
                            if k not in ("cpu", "pss", "fetchq", "inflight", "buffered")
                            and not k.startswith(("ranges", "cpu_"))
                            and k not in ("top_files_mib", "thread_names")
                        }
                        print(f"{'':<24} {'':>7}      by mapping {bm}", flush=True)
                        top = r["peak_by_mapping"].get("top_files_mib")
                        print(f"{'':<24} {'':>7}      file pages at the peak {top}", flush=True)
                        names = r["peak_by_mapping"].get("thread_names")
                        print(f"{'':<24} {'':>7}      threads at the peak {names}", flush=True)
    finally:
        if not args.topic and not args.keep_topic:
            delete_topics(BOOTSTRAP, [topic, f"dlq_{topic}"])
    print(
        f"\n{'variant':<32}{'spans/s':>9}{'spans/cpu-s':>12}{'peak RSS MiB (max)':>20}"
        f"{'PSS':>6}{'anon':>6}"
    )
    summary = []
    for key, rs in results.items():
        sps = statistics.median(r["spans_per_s"] for r in rs)
        spc = statistics.median(r["spans_per_cpu_s"] for r in rs)
        mib = {k: max(r["peak"][k] for r in rs) / MIB for k in ("rss", "pss", "anon")}
        print(f"{key:<32}{sps:>9.0f}{spc:>12.0f}{mib['rss']:>20.0f}{mib['pss']:>6.0f}"
              f"{mib['anon']:>6.0f}")  # fmt: skip
        summary.append({"variant": key, "spans_per_s": sps, "spans_per_cpu_s": spc, "runs": rs})
    out = ROOT / "bench" / "results" / "flow_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"time": time.time(), "spans": spans, "results": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
