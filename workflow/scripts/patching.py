from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.decodability.patching import run_patching

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
s = job["patching"]
table, answers, meta = run_patching(
    snakemake.input.prompts,
    snakemake.input.activations,
    snakemake.input.decodability,
    snakemake.input.model,
    job.model(),
    layer=s["layer"],
    shots=s["shots"],
    mode=s["mode"],
    max_new_tokens=job["max_new_tokens"],
    dataset=wc.dataset,
)
write_table(answers, snakemake.output.answers, meta)
write_table(table, snakemake.output.table, {"patching": s, **meta})
log.info(
    "patched layer %d at %d shots (%s):\n%s",
    meta["layer"],
    meta["shots"],
    meta["mode"],
    table.pivot_table(index="task", columns=["metric", "arm"], values="value").round(3).to_string(),
)
