# The lab cache ($SNAKEMAKE_OUTPUT_CACHE): every entry read-only once Snakemake has stored it.
# Snakemake stores entries world-writable (0666 / 0777, hard-coded in
# snakemake.caching.local.OutputFileCache.set_permissions); this wraps its private `store` so each
# entry is sealed (iclscope.core.lab_cache.seal) right after. It lives here, in the workflow, because the
# iclscope package imports no Snakemake; docs/cluster.md explains the set-up.

from iclscope.core.lab_cache import seal as _seal_entry  # noqa: E402


def seal_entries_when_stored():
    """Make Snakemake's local output cache seal each entry right after storing it. Called by
    common.smk when --cache is on, so it runs in the main process and in every SLURM job (where the
    slurm executor stores the entry). Idempotent."""
    from snakemake.caching.local import OutputFileCache

    if getattr(OutputFileCache.store, "iclscope_seals", False):
        return
    store_world_writable = OutputFileCache.store

    async def store(self, job):
        await store_world_writable(self, job)
        for _output, cachefile in await self.get_outputfiles_and_cachefiles(job):
            _seal_entry(cachefile)

    store.iclscope_seals = True
    OutputFileCache.store = store
