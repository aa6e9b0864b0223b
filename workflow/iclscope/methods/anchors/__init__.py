"""Label words as anchors: saliency, isolation, AUCROC/R_l, re-weighting, compression, error
diagnosis (Wang et al. 2023, docs/methods.md §3).
"""
