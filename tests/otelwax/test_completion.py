"""``otelwax completion bash``: bash completes the commands, their options and choices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers for ``words`` (the last one is being typed)."""
    arr = " ".join(f"'{w}'" for w in words)
    line = f'source {script}; COMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; _otelwax; '
    line += 'printf "%s\\n" "${COMPREPLY[@]}"'
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_bash_completes_commands_options_and_choices(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "otelwax", "completion", "bash"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    script = tmp_path / "otelwax.bash"
    script.write_text(res.stdout)
    assert _complete(script, "otelwax", "rep") == ["replay"]
    assert _complete(script, "otelwax", "replay", "")[:2] == ["--help", "traces"]
    assert _complete(script, "otelwax", "replay", "--f") == ["--from"]
    assert _complete(script, "otelwax", "flow", "sp") == ["spanmetrics"]
    assert _complete(script, "otelwax", "clickhouse", "mi") == ["migrate"]
    (tmp_path / "my.yaml").write_text("")
    assert _complete(script, "otelwax", "doctor", "-c", str(tmp_path / "my")) == [
        str(tmp_path / "my.yaml")
    ]
