"""Benchmarking, not metrics: throughput figures of the generator and of the Inception pipeline
(:mod:`stylenat.bench.generator`, :mod:`stylenat.bench.inception`), the neighborhood-attention records
(:mod:`stylenat.bench.na`) and G's blocks by part (:mod:`stylenat.bench.blocks`), what
``scripts/benchmark.py`` sits on. The timers, memory and FLOP counters are :mod:`stylenat.perf`'s."""
