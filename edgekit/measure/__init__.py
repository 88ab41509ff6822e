"""Measure stage: statistics over latency samples (protocol and remote timing live beside them)."""
