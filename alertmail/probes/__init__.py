"""Probes: running them on a schedule, the history of their samples, recorded sample files."""
