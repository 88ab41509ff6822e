"""Measure stage: ``measure_latency`` (protocol.py) and statistics over latency samples (stats.py)."""
