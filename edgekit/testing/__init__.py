"""Fixtures shipped with the package: tiny models and local test devices."""
