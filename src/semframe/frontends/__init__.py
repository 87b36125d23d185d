"""User-facing fronts: they only build plan nodes and hand them to the executor."""
