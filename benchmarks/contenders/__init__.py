"""Contender workers: one process each (see ``benchmarks/_protocol.py``)."""
