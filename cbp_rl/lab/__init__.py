"""Experiments at scale: sweeps (specs, backends), aggregation over seeds, figures and tables.

The top layer below the entry points: it may import every command package, nothing imports it.
"""
