"""Latency-constrained search from a user's baseline detector (ENOT's flow)."""
