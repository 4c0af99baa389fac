"""Offline generators for the synthetic demo datasets of every stage (no network, no external data)."""
