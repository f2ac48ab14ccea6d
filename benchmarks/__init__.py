"""Benchmarks of the collapse framework against its targets (issue 4).

    python -m benchmarks [--quick] [--out results.json] [--only NAME,...]

See benchmarks/run.py for the options and each module's docstring for what it measures.
"""
