import pandas as pd

from iclscope.icicl import ICICLSettings, evaluate_icicl, paired_table
from iclscope.jobs import job_of
from iclscope.logs import log_to
from iclscope.tables import metric_frame, read_table, write_table
from iclscope.taskspace import read_task_spaces

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
settings = ICICLSettings(**job["icicl"], word_k=job["word_k"])
spaces = {v: read_task_spaces(snakemake.input.taskspace, v) for v in (settings.task_space,) if v != "pool"}
per_example, summary, meta = evaluate_icicl(
    read_table(snakemake.input.dataset), job.dataset(), snakemake.input.model, job.model(), spaces, settings,
    **job["taskspace"])
paired = paired_table(per_example, settings.n_boot, settings.seed)
write_table(per_example, snakemake.output.predictions, meta)
# label_loyalty / word_loyalty: vs full_icl on the same input; draw: which Hidden_random draw hidden_random_top is
rows = [{"metric": m, "task": r["arm"], "value": r[m],
         **({"ci_low": r["accuracy_lo"], "ci_high": r["accuracy_hi"]} if m == "accuracy" else {})}
        for r in summary.to_dict("records")
        for m in ("accuracy", "macro_f1", "label_loyalty", "word_loyalty", "tokens", "seconds_per_example",
                  "speedup_vs_full_icl", "time_reduction_vs_full_icl", "draw") if not pd.isna(r[m])]
# paired: accuracy(arm) - accuracy(reference) on the same inputs, bootstrap interval, McNemar / sign-flip p
rows += [row for r in paired.to_dict("records") for row in (
    {"metric": f"accuracy_diff_vs_{r['reference']}", "task": r["arm"], "value": r["diff"], "ci_low": r["diff_lo"],
     "ci_high": r["diff_hi"]},
    {"metric": f"p_value_vs_{r['reference']}", "task": r["arm"], "value": r["p_value"]})]
write_table(metric_frame(rows, model=wc.model, dataset=wc.dataset, family="icicl", position="query",
                         layer=meta["inject_layer"]), snakemake.output.table, meta)
log.info("IC-ICL summary:\n%s\npaired:\n%s\n%s", summary.to_string(), paired.to_string(), meta)
