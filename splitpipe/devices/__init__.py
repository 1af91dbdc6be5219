"""Devices: target profiles, runtimes that execute a model half, and power meters."""
