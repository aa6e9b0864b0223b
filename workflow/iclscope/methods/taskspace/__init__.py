"""Task spaces, IC-ICL and TS-FT (Yang et al. 2025, docs/methods.md §1)."""
