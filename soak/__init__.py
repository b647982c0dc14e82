"""``make soak``: the whole otelwax stack under steady load and injected faults, then a
reconciliation of what clients were told was accepted against what was stored.

    python -m soak --duration 10m --seed 7            # see --help
"""
