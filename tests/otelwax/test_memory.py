"""otelwax.memory: what the process gives back shows in its RSS (as ``ps`` reports it)."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otelwax.memory import page_out_file

MIB = 2**20


def _mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, ours = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                ours = len(head) > 5 and head[5] == str(path)
            elif ours and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_page_out_file_returns_resident_file_pages_and_they_read_back(tmp_path: Path) -> None:
    """A read-only mapping of a file (a library's code) counts in RSS once touched; after
    page_out_file it no longer does, and its bytes read back unchanged on the next touch."""
    path = tmp_path / "lib.bin"
    data = os.urandom(24 * MIB)
    with open(path, "wb") as out:
        out.write(data)
        os.fsync(out.fileno())  # clean pages, as a library's are
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as mm:
        touched = sum(mm[i] for i in range(0, len(mm), mmap.PAGESIZE))
        before = _mapped_rss(path)
        assert before >= 20 * MIB, before

        advised = page_out_file(str(path))

        after = _mapped_rss(path)
        assert advised >= 24 * MIB
        assert after < before / 4, (before, after)
        assert sum(mm[i] for i in range(0, len(mm), mmap.PAGESIZE)) == touched
        assert mm[: 1 * MIB] == data[: 1 * MIB]


def test_page_out_file_of_an_unmapped_file_does_nothing(tmp_path: Path) -> None:
    assert page_out_file(str(tmp_path / "not-mapped.so")) == 0


_ARROW_BURST = """
import sys, time
import numpy as np, pyarrow as pa, pyarrow.compute as pc
from otelwax.memory import start_release
def anon():
    with open("/proc/self/smaps_rollup") as fh:
        return next(int(x.split()[1]) << 10 for x in fh if x.startswith("Anonymous:"))
start_release(0.1)
base = anon()
keep = []
for _ in range(6):  # sorted copies of decoded batches, as the sink's presort makes them
    a = pa.array(np.random.default_rng(1).integers(0, 1 << 40, 4_000_000))
    keep.append(pc.take(a, pc.sort_indices(a)))
peak = anon()
del keep, a
time.sleep(0.5)
print(base, peak, anon())
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux only")
def test_arrow_memory_freed_after_a_burst_leaves_the_rss() -> None:
    """A flow's Arrow buffers (presorted copies: ~200 MiB in a burst here) leave its RSS once
    freed: with start_release they come from glibc, which unmaps big buffers, instead of
    Arrow's default pool (mimalloc), which kept them resident."""
    out = subprocess.run(
        [sys.executable, "-c", _ARROW_BURST], capture_output=True, text=True, timeout=120,
        check=True, env={k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"},
    )  # fmt: skip
    base, peak, after = (int(x) for x in out.stdout.split())
    assert peak - base >= 150 * MIB, (base, peak)
    assert after - base < 40 * MIB, (base, peak, after)


_HEAP_BURST = """
import time
import numpy as np
from otelwax.memory import SERVER_MMAP_THRESHOLD, start_release
def anon():
    with open("/proc/self/smaps_rollup") as fh:
        return next(int(x.split()[1]) << 10 for x in fh if x.startswith("Anonymous:"))
start_release(0.1, SERVER_MMAP_THRESHOLD)
base = anon()
keep = [np.ones(3 << 16) for _ in range(128)]  # 1.5 MiB each, as librdkafka's lz4 buffers
pin = np.ones(1 << 13)  # a live block above them: glibc cannot just lower the heap's top
peak = anon()
del keep
time.sleep(0.5)
print(base, peak, anon())
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux only")
def test_buffers_below_the_server_mmap_threshold_leave_the_rss_once_freed() -> None:
    """A flow into a server maps only buffers of 2 MiB and more on their own: smaller ones
    (~190 MiB of 1.5 MiB buffers here) come from glibc's heap, and still leave the RSS once
    freed, returned by the periodic trim (a block allocated after them keeps the heap's top)."""
    out = subprocess.run(
        [sys.executable, "-c", _HEAP_BURST], capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    base, peak, after = (int(x) for x in out.stdout.split())
    assert peak - base >= 150 * MIB, (base, peak)
    assert after - base < 40 * MIB, (base, peak, after)
