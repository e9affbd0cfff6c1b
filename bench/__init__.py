"""Benchmarks of ttsd against the alternatives, measured on recorded audio.

Run ``python -m bench.run`` (see ``docs/benchmarks.md``).
"""
