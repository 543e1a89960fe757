"""Federated learning tasks for tff-prune."""
