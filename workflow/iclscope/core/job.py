"""The script side of a job: what a running Snakemake script reads (its settings, wildcards, resources).

A rule passes `iclscope.core.jobs.settings(...)` as its `params.settings`; its script calls
`job_of(snakemake)` and reads them back, never the config. This module is all of the settings path
a script runs: computing the settings (the layer resolution, a model's depth, the rule table) and
validating the config happen before any job, in iclscope.core.jobs / iclscope.core.validate, which
no script imports, so they are in no job's code digest (a change there that changes a job's bytes
changes its params instead).

No torch / transformers / Snakemake import.
"""

from __future__ import annotations

import json

from iclscope.core.config import DatasetSpec, ModelSpec


class Job:
    """What one job's script reads: its settings (params), wildcards and runtime resources.

    `job_of(snakemake)` builds it; `job.model()` / `job.dataset()` give the specs the package's
    functions take, `job["tsft"]` a method's settings."""

    def __init__(self, settings: dict, wildcards: dict, resources: dict | None = None):
        self.settings = settings
        self.wildcards = wildcards
        self.resources = resources or {}

    def __getitem__(self, key: str):
        return self.settings[key]

    def model(self) -> ModelSpec:
        fast = {k: self.resources[k] for k in ("batch_size", "max_batch_tokens") if k in self.resources}
        return ModelSpec.from_config(self.wildcards["model"], {**self.settings["model"], **fast})

    def dataset(self) -> DatasetSpec:
        return DatasetSpec.from_config(self.wildcards["dataset"], self.settings["dataset"])


def job_of(smk) -> Job:
    """The Job of a running Snakemake script (duck-typed: the package imports no Snakemake)."""
    params = dict(smk.params.items()) if hasattr(smk.params, "items") else {}
    raw = params.get("settings", "{}")
    wildcards = {k: v for k, v in dict(smk.wildcards.items()).items() if isinstance(k, str)}
    resources = {k: v for k, v in dict(smk.resources.items()).items() if isinstance(k, str)}
    return Job(json.loads(raw) if isinstance(raw, str) else raw, wildcards, resources)
