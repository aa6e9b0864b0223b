"""Representations as language: H_dw and its four measures, on a model and over toy training
(Conklin & Smith 2024, docs/methods.md §2).
"""
