"""Bytewax dataflows, one module per signal; each exposes ``flow``."""
