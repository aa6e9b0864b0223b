"""Task decodability, patching, layer LoRA and the toy regression model (Han et al. 2024,
docs/methods.md §4).
"""
