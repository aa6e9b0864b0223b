"""Datasets: a user's or a registry's table prepared to one schema, and the synthetic tasks."""
