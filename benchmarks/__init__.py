"""The project's own benchmark scripts (``python -m benchmarks.bench_model``) and the
straightforward reference formulation they compare against; results go to ``benchmarks/results/``."""
