"""iclscope: how language models learn in context, as a Snakemake workflow.

All logic lives in this package (pure functions over arrays and files, no Snakemake import);
workflow/scripts/*.py are thin adapters that call one function each.
"""

__version__ = "0.1.0"
