"""The model layer: loading a causal LM, the one hook layer (capture), prompts, extraction of
activations and token states, LoRA training.
"""
