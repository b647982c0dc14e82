"""Run ``python -m bytewax.run`` for the flow tests (``python tests/flows/run_flow.py ARGS``)."""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tests.flows.standin_install  # noqa: E402,F401  TEMPORARY

sys.argv = ["bytewax.run", *sys.argv[1:]]
runpy.run_module("bytewax.run", run_name="__main__")
