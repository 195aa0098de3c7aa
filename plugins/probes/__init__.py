"""The bundled probes: ``system`` (psutil counters) and ``process`` (watched processes)."""
