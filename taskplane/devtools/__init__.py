"""Helpers for running taskplane locally: finding or starting a Redis server."""
