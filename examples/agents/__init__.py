"""Runnable example agents (HTTP and gRPC) for taskplane."""
