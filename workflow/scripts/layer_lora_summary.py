from iclscope.layer_lora import summary_table
from iclscope.logs import log_to
from iclscope.tables import write_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
runs = dict(zip(snakemake.params.arms, zip(snakemake.input.runs, snakemake.input.activations, strict=True),
                strict=True))
table = summary_table(snakemake.input.base, runs, model=wc.model, dataset=wc.dataset,
                      decodability=snakemake.config["decodability"], n_boot=snakemake.config["icl_accuracy"]["n_boot"])
write_table(table, snakemake.output[0], {"layer_lora": snakemake.config["layer_lora"],
                                         "decodability": snakemake.config["decodability"]})
acc = table[(table.metric == "accuracy") & (table.task == "all")]
peak = table[table.metric == "decodability_euclidean_peak"]
log.info("accuracy (all tasks):\n%s", acc.pivot_table(index="label_type", columns="shots", values="value").to_string())
log.info("peak decodability (euclidean):\n%s", peak.pivot_table(index="label_type", columns="shots",
                                                                  values="value").to_string())
