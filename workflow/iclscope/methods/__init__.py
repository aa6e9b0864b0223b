"""The methods, one sub-package per paper family; `icl` holds the ICL accuracy all of them read.

* taskspace: task spaces, IC-ICL, TS-FT (Yang et al. 2025; docs/methods.md §1)
* entropy: representations as language, toy language models (Conklin & Smith 2024; §2)
* anchors: label words as anchors (Wang et al. 2023; §3)
* decodability: task decodability, patching, layer LoRA, toy regression (Han et al. 2024; §4)
"""
