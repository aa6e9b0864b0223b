import numpy as np

from iclscope.core.atomic import written
from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.methods.anchors.reweighting import run_reweighting

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
s = job["reweighting"]
table, betas, info = run_reweighting(
    snakemake.input.prompts,
    snakemake.input.model,
    job.model(),
    aux_per_class=s["aux_per_class"],
    epochs=s["epochs"],
    lr=s["lr"],
    n_test_per_seed=s["test_prompts_per_seed"],
    dataset=wc.dataset,
    n_boot=s["n_boot"],
)
with written(snakemake.output.beta) as tmp, open(tmp, "wb") as fh:  # beta [layer, head, demonstration] per seed
    np.savez(fh, **{f"seed_{seed}": beta for seed, beta in betas.items()})
write_table(table, snakemake.output.table, {"reweighting": s, **info})
log.info("train loss per epoch: %s", info["train_loss_per_epoch"])
arms = table[table.layer.isna() & table.arm.isin(["vanilla", "reweighted"])]
log.info(
    "re-weighting vs vanilla ICL:\n%s",
    arms.pivot_table(index="seed", columns=["metric", "arm"], values="value").round(3).to_string(),
)
gain = table[table.arm == "reweighted-vanilla"]
log.info(
    "paired gain re-weighted - vanilla (seed empty = pooled):\n%s",
    gain.pivot_table(index=gain["seed"].astype("string").fillna("pooled"), columns="metric", values="value")
    .round(4)
    .to_string(),
)
