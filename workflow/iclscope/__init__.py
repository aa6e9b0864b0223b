"""iclscope: how language models learn in context, as a Snakemake workflow.

All logic lives in this package (pure functions over arrays and files, no Snakemake import);
workflow/scripts/*.py are thin adapters that call one function each.
"""

# bump it as CONTRIBUTING.md says; CHANGELOG.md lists what each version changed. It is not part of
# any job's code digest (iclscope.core.jobs): a release alone reruns nothing.
__version__ = "0.4.0"


def open(path, require_complete: bool = True):  # noqa: A001  (mirrors h5py.File / builtins.open on purpose)
    """Open an activation or token-state file lazily: `iclscope.open(path)["resid/query"][:, 15]`."""
    from iclscope.core.store import ActivationFile

    return ActivationFile(path, require_complete)
