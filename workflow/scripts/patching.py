from iclscope.config import ModelSpec
from iclscope.logs import log_to
from iclscope.patching import run_patching
from iclscope.tables import write_table

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
s = snakemake.config["patching"]
table, answers, meta = run_patching(snakemake.input.prompts, snakemake.input.activations,
                                    snakemake.input.decodability, snakemake.input.model,
                                    ModelSpec.from_config(wc.model, snakemake.config["models"][wc.model]),
                                    layer=s["layer"], shots=s["shots"], mode=s["mode"],
                                    max_new_tokens=snakemake.params.max_new_tokens, dataset=wc.dataset)
write_table(answers, snakemake.output.answers, meta)
write_table(table, snakemake.output.table, {"patching": s, **meta})
log.info("patched layer %d at %d shots (%s):\n%s", meta["layer"], meta["shots"], meta["mode"],
         table.pivot_table(index="task", columns=["metric", "label_type"], values="value").round(3).to_string())
