"""The benchmark harness (issue 10): the product as production runs it against a bare
baseline, in one run. See README "Benchmarks" and bench/cli.py."""
