"""The HTML report as a person sees it: rendered by a real headless Chromium (Debian's)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from otelwax.report import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BLUE, ORANGE, RED = (0x4E, 0x79, 0xA7), (0xF2, 0x8E, 0x2B), (0xE1, 0x57, 0x59)


def _data() -> dict:
    t0 = 1_765_000_000 // 60 * 60
    timeline = [
        {"minute": t0 + 60 * i, "service": svc, "spans": base + 10 * i, "errors": e * i,
         "p99_ms": base / 20 + i}
        for i in range(6)
        for svc, e, base in (("checkout", 0, 60), ("payments", 3, 100))
    ]  # fmt: skip
    base = 1_765_000_000 * 10**9
    spans = [
        {"span_id": "a", "parent_span_id": "", "service": "frontend", "span": "GET /cart",
         "start_ns": base, "duration_ms": 40.0, "status": "STATUS_CODE_OK"},
        {"span_id": "b", "parent_span_id": "a", "service": "payments", "span": "charge",
         "start_ns": base + 5 * 10**6, "duration_ms": 30.0, "status": "STATUS_CODE_ERROR"},
    ]  # fmt: skip
    return {
        "generated": "2026-12-06 10:00:00 UTC",
        "source": "chdb .data/run/chdb-traces",
        "counts": [{"table": "otel_traces", "rows": 1234}],
        "services": [
            {"service": "payments", "spans": 600, "errors": 45, "error_rate": 0.075,
             "p50_ms": 3.0, "p99_ms": 10.0},
            {"service": "checkout", "spans": 600, "errors": 0, "error_rate": 0.0,
             "p50_ms": 2.0, "p99_ms": 9.0},
        ],
        "timeline": timeline,
        "traces": [{"trace_id": "ab" * 16, "root_service": "frontend", "root_span": "GET /cart",
                    "spans": 2, "errors": 1, "duration_ms": 40.0}],
        "trace": {"trace_id": "ab" * 16, "spans": spans},
        "lag": [{"flow": "traces", "topic": "otlp_spans", "lag": 0}],
    }


def _has(img: Image.Image, rgb: tuple[int, int, int], at_least: int = 20) -> bool:
    colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
    near = sum(n for n, c in colors if all(abs(a - b) <= 12 for a, b in zip(c, rgb, strict=True)))
    return near >= at_least


@pytest.mark.skipif(CHROMIUM is None, reason="scripts/test.sh installs Debian's chromium")
def test_report_renders_in_a_real_browser(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_report(_data()))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    run = dict(capture_output=True, text=True, timeout=120, cwd=tmp_path)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], **run)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for element in ("counts", "services", "chart-spans", "chart-errors", "chart-p99", "waterfall"):
        assert f'id="{element}"' in dom.stdout, element
    assert dom.stdout.count('class="series"') == 6  # 2 services x 3 charts
    assert "errors in 1 service(s): payments" in dom.stdout

    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,2200", f"--screenshot={shot}", page.as_uri()],
        **run,
    )
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    img = Image.open(shot)
    assert img.size == (1200, 2200)
    # the two services' lines and the error span's red bar are drawn, not just text
    assert _has(img, BLUE) and _has(img, ORANGE) and _has(img, RED)


def test_a_run_shorter_than_two_minutes_still_draws_its_values() -> None:
    """`make run` sends 10 s of telemetry: one minute per service, which a line alone cannot
    show (its charts were empty)."""
    data = _data()
    data["timeline"] = [r for r in data["timeline"] if r["minute"] == data["timeline"][0]["minute"]]
    html = render_report(data)
    chart = html.split('id="chart-spans"', 1)[1].split("</svg>", 1)[0]
    assert chart.count("<circle") == 2  # one dot per service
