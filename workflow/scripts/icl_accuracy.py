from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.icl import accuracy_table, predictions

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
preds, attrs = predictions(snakemake.input[0])
settings = job_of(snakemake)["icl_accuracy"]
table = accuracy_table(preds, attrs["kind"], settings["n_boot"], wc.model, wc.dataset)
meta = {"settings": settings, "source": snakemake.input[0], "prompts_sha256": attrs["prompts_sha256"]}
write_table(preds.assign(model=wc.model, dataset=wc.dataset), snakemake.output.predictions, meta)
write_table(table, snakemake.output.table, meta)
log.info("accuracy:\n%s", table[table.metric.isin(["accuracy", "majority_baseline"])].to_string())
