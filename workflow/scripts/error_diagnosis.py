from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.anchors.error_diagnosis import ErrorDiagnosisSettings, run_error_diagnosis

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
s = job["error_diagnosis"]
table, info = run_error_diagnosis(
    snakemake.input.prompts,
    snakemake.input.activations,
    snakemake.input.model,
    job.model(),
    ErrorDiagnosisSettings(**s),
    dataset=wc.dataset,
)
write_table(table, snakemake.output[0], {"error_diagnosis": s, **info})
pooled = table[table.seed.isna()]
for kind in ("predicted", "true"):
    m = pooled[pooled.metric == f"{kind}_confusion"]
    pairs = m["variant"].str.split("|", expand=True)
    log.info(
        "%s confusion at layer %d (pooled):\n%s",
        kind,
        info["layer"],
        m.assign(i=pairs[0], j=pairs[1]).pivot(index="i", columns="j", values="value").round(3).to_string(),
    )
corr = table[table.metric.str.startswith("confusion_")]
log.info(
    "correlation over class pairs:\n%s",
    corr.assign(seed=corr.seed.astype("string").fillna("pooled"))
    .pivot(index="seed", columns="metric", values="value")
    .round(3),
)
