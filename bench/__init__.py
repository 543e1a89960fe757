"""Benchmarks that produce the README's measured tables (results in bench/results/)."""
