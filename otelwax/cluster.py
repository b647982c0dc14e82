"""Process identity for bytewax clusters, e.g. a Kubernetes StatefulSet.

bytewax needs, per process, ``-i <process id>`` and ``-a "host:port;host:port;..."`` (the same
list on every process). In a StatefulSet pod ``flows-traces-2`` the ordinal is the process id,
and peers are reachable through the headless service as
``flows-traces-{i}.flows-traces.<namespace>.svc.cluster.local``:

    OTELWAX_REPLICAS=3                      # or BYTEWAX_REPLICAS
    OTELWAX_PEER_PATTERN="flows-traces-{i}.flows-traces:2101"   # default: <set>-{i}.<set>:2101
    HOSTNAME=flows-traces-2                 # set by Kubernetes

``cluster_args(env)`` turns that into ``["-i", "2", "-a", "...;...;..."]`` (``[]`` with one
replica or none configured); ``process_index(env)`` is that process id (0 with one replica).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["cluster_args", "ordinal_from_hostname", "peer_addresses", "process_index", "replicas"]

_ORDINAL = re.compile(r"^(?P<set>.+)-(?P<i>\d+)$")
DEFAULT_PORT = 2101


def ordinal_from_hostname(hostname: str) -> tuple[str, int]:
    """``"flows-traces-2"`` → ``("flows-traces", 2)``; ValueError when there is no ordinal."""
    m = _ORDINAL.match(hostname.split(".")[0])
    if not m:
        raise ValueError(f"hostname {hostname!r} does not end in -<ordinal> (StatefulSet pod)")
    return m.group("set"), int(m.group("i"))


def peer_addresses(pattern: str, replicas: int) -> list[str]:
    """``pattern`` with ``{i}`` replaced by 0..replicas-1 (each must carry a ``:port``)."""
    if "{i}" not in pattern:
        raise ValueError(f"peer pattern {pattern!r} must contain {{i}}")
    out = [pattern.replace("{i}", str(i)) for i in range(replicas)]
    for a in out:
        if not re.match(r"^[^:;\s]+:\d+$", a):
            raise ValueError(f"peer address {a!r} must be host:port")
    return out


def replicas(env: Mapping[str, str]) -> int:
    """``$OTELWAX_REPLICAS`` (or ``$BYTEWAX_REPLICAS``), 1 when unset."""
    return int(env.get("OTELWAX_REPLICAS") or env.get("BYTEWAX_REPLICAS") or 1)


def _identity(env: Mapping[str, str], n: int) -> tuple[str, int]:
    hostname = env.get("OTELWAX_POD_NAME") or env.get("HOSTNAME") or ""
    statefulset, ordinal = ordinal_from_hostname(hostname)
    if ordinal >= n:
        raise ValueError(f"pod ordinal {ordinal} >= replicas {n}")
    return statefulset, ordinal


def process_index(env: Mapping[str, str]) -> int:
    """This process's id in the cluster: the pod ordinal, or 0 with one replica."""
    n = replicas(env)
    return 0 if n <= 1 else _identity(env, n)[1]


def cluster_args(env: Mapping[str, str]) -> list[str]:
    """bytewax ``-i``/``-a`` arguments derived from the environment (see module docstring)."""
    n = replicas(env)
    if n <= 1:
        return []
    statefulset, ordinal = _identity(env, n)
    pattern = env.get("OTELWAX_PEER_PATTERN") or f"{statefulset}-{{i}}.{statefulset}:{DEFAULT_PORT}"
    return ["-i", str(ordinal), "-a", ";".join(peer_addresses(pattern, n))]
