"""The package's version, written once here (CONTRIBUTING.md says when it is bumped;
CHANGELOG.md lists what each version changed; `iclscope.__version__` is this one).

Every layer reads it from here as provenance (files and lab-store sidecars record it), so no
module imports the top package for it. It is in no job's code digest (iclscope.core.jobs leaves
`__version__` and its imports out): a release alone reruns nothing.
"""

__version__ = "0.4.0"
