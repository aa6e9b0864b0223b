"""iclscope: how language models learn in context, as a Snakemake workflow.

All logic lives in this package (pure functions over arrays and files, no Snakemake import);
workflow/scripts/*.py are thin adapters that call one function each.
"""

# written once, in iclscope.core.version (bump it as CONTRIBUTING.md says); in no job's code digest
from iclscope.core.version import __version__ as __version__


def open(path, require_complete: bool = True):  # noqa: A001  (mirrors h5py.File / builtins.open on purpose)
    """Open an activation or token-state file lazily: `iclscope.open(path)["resid/query"][:, 15]`."""
    from iclscope.core.store import ActivationFile

    return ActivationFile(path, require_complete)
