"""Returning freed memory to the OS in a flow process (``start_release``).

A flow allocates and frees tens of MiB per Kafka range: payloads (Python bytes), decoded Arrow
buffers (the native codec allocates with glibc malloc), presorted copies (Arrow's pool). glibc
keeps freed chunks in its arenas and grows its mmap threshold after the first large free, so
the big buffers of later ranges land in the heap too: ~150-250 MiB of a flow's RSS were free
heap memory (``bench/flow_memory_bench.py``). ``start_release`` fixes the thresholds (buffers of
1 MiB and more are mapped and unmapped on their own) and trims the heap and Arrow's pool
periodically on a daemon thread. It also moves Arrow's allocations from its default pool
(mimalloc, which kept ~70 MiB of freed pages resident in a flow into a server and retains what a
burst of big buffers took) to glibc, where they follow the same rules: up to ~10 % more CPU per span
(page faults of fresh mappings) for 60-130 MiB less peak RSS into a server; set
``ARROW_DEFAULT_MEMORY_POOL=mimalloc`` to trade back.

``page_out_file`` returns the resident pages of a mapped file (embedded chdb's 555 MB library:
~230 MiB of its code and constants are resident once it has loaded, most of it never touched
again). They are clean file pages the kernel could reclaim under pressure anyway, but ``ps``
counts them in the flow's RSS until it does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading

import pyarrow as pa

log = logging.getLogger(__name__)

__all__ = [
    "MMAP_THRESHOLD",
    "SERVER_MMAP_THRESHOLD",
    "freeze_startup_objects",
    "page_out_file",
    "start_release",
]

MMAP_THRESHOLD = 1 << 20
"""Allocations of this size and more get their own mapping (returned to the OS on free)."""
SERVER_MMAP_THRESHOLD = 2 << 20
"""The same in a flow into a ClickHouse server, which has RSS to spare (goal: 400 MiB, ~300
used): librdkafka's lz4 output (a 1 MB block grown to ~1.75 MiB by ``realloc``, once per
message set) and the decoder's smaller columns then reuse heap pages instead of faulting in
fresh mappings (+13 % spans per CPU-s, +15 MiB of RSS, ``bench/README.md``)."""
_TRIM_THRESHOLD = 32 << 20  # the periodic trim does the rest: no trim on every free
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MADV_PAGEOUT = 21  # Linux >= 5.4

_started: threading.Event | None = None
_lock = threading.Lock()


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.malloc_trim  # noqa: B018 - glibc only (musl has none)
        return libc
    except (OSError, AttributeError):
        return None


def freeze_startup_objects() -> None:
    """Once a flow has started: start-up made tens of thousands of long-lived objects
    (modules, configs, clients); moved out of the collector's sight, its full passes no longer
    walk them all (``gc.freeze``)."""
    gc.freeze()


def start_release(interval_s: float, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Once per process: fix glibc's mmap (``mmap_threshold``) and trim thresholds, make glibc
    Arrow's default memory pool and every ``interval_s`` return free heap pages and Arrow's
    unused pool memory to the OS. 0 turns it off. Returns whether the thread runs (not on a
    libc without ``malloc_trim``)."""
    global _started
    if interval_s <= 0:
        return False
    with _lock:
        if _started is not None:
            return True
        libc = _libc()
        if libc is None:
            log.info("memory: no glibc malloc_trim here; freed memory stays with the allocator")
            return False
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:  # a pool the user chose wins
            pa.set_memory_pool(pa.system_memory_pool())  # earlier buffers stay where they are
        _started = stop = threading.Event()

    def run() -> None:
        pool = pa.default_memory_pool()
        while not stop.wait(interval_s):
            libc.malloc_trim(0)
            pool.release_unused()

    threading.Thread(target=run, name="otelwax-memory-release", daemon=True).start()
    return True


def page_out_file(path: str) -> int:
    """Have the kernel reclaim this process's resident pages of the read-only mappings of
    ``path`` now (``MADV_PAGEOUT``): they leave the RSS and are read back from the file when
    touched again. Pages another process maps too are left alone (by the kernel). Returns the
    bytes of mappings advised: 0 if the file is not mapped here or the kernel cannot."""
    libc = _libc()
    if libc is None:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    real = os.path.realpath(path)
    advised = 0
    with open("/proc/self/maps") as fh:
        spans = [line.split(maxsplit=5) for line in fh]
    for addr, perms, *_rest, name in (s for s in spans if len(s) == 6):
        if name.rstrip("\n") != real or "w" in perms:  # written pages are anonymous copies
            continue
        start, end = (int(a, 16) for a in addr.split("-"))
        if libc.madvise(start, end - start, _MADV_PAGEOUT) != 0:
            log.debug("memory: madvise(MADV_PAGEOUT) %s: errno %d", real, ctypes.get_errno())
            return advised
        advised += end - start
    return advised
