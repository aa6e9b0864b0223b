from iclscope.config import DatasetSpec, ModelSpec
from iclscope.logs import log_to
from iclscope.tables import read_table
from iclscope.taskspace import read_task_spaces
from iclscope.tsft import TSFTSettings, train_tsft

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
cfg = {k: v for k, v in snakemake.config["tsft"].items() if k not in ("enabled", "seeds", "task_space")}
if wc.arm == "baseline":
    cfg["lam"] = 0.0
spaces = read_task_spaces(snakemake.input.taskspace, snakemake.config["tsft"]["task_space"])
cfg["layer"] = cfg["layer"] if cfg["layer"] is not None else max(spaces) // 2  # resid index L // 2
settings = TSFTSettings(**cfg, seed=int(wc.seed))
summary = train_tsft(read_table(snakemake.input.dataset),
                     DatasetSpec.from_config(wc.dataset, snakemake.config["datasets"][wc.dataset]),
                     snakemake.input.model, ModelSpec.from_config(wc.model, snakemake.config["models"][wc.model]),
                     spaces[settings.layer], settings, snakemake.output[0])
log.info("TS-FT %s: %s", wc.arm, summary)
