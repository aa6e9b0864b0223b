import pandas as pd

from iclscope.icicl import ICICLSettings, evaluate_icicl
from iclscope.jobs import job_of
from iclscope.logs import log_to
from iclscope.tables import metric_frame, read_table, write_table
from iclscope.taskspace import read_task_spaces

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
settings = ICICLSettings(**job["icicl"], word_k=job["word_k"])
per_example, summary, meta = evaluate_icicl(
    read_table(snakemake.input.dataset), job.dataset(),
    snakemake.input.model, job.model(),
    read_task_spaces(snakemake.input.taskspace, settings.task_space), settings, **job["taskspace"])
write_table(per_example, snakemake.output.predictions, meta)
# label_loyalty / word_loyalty: vs full_icl on the same input; draw: which Hidden_random draw hidden_random_top is
rows = [{"metric": m, "task": r["arm"], "value": r[m]} for r in summary.to_dict("records")
        for m in ("accuracy", "macro_f1", "label_loyalty", "word_loyalty", "tokens", "seconds_per_example",
                  "speedup_vs_full_icl", "time_reduction_vs_full_icl", "draw") if not pd.isna(r[m])]
write_table(metric_frame(rows, model=wc.model, dataset=wc.dataset, family="icicl", position="query",
                         layer=meta["inject_layer"]), snakemake.output.table, meta)
log.info("IC-ICL summary:\n%s\n%s", summary.to_string(), meta)
