from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.resume import checkpoint_dir
from iclscope.core.tables import read_table
from iclscope.methods.taskspace.space import read_task_spaces
from iclscope.methods.taskspace.tsft import TSFTSettings, train_tsft

log = log_to(snakemake.log[0], threads=snakemake.threads)
wc = snakemake.wildcards
job = job_of(snakemake)
cfg = {k: v for k, v in job["tsft"].items() if k != "task_space"}  # the baseline arm's lam is 0 (iclscope/core/jobs.py)
variant = job["tsft"]["task_space"]  # train_zero_shot: fitted inside train_tsft on the states it shapes
spaces = read_task_spaces(snakemake.input.taskspace, "class_mean" if variant == "train_zero_shot" else variant)
cfg["layer"] = cfg["layer"] if cfg["layer"] is not None else max(spaces) // 2  # resid index L // 2
settings = TSFTSettings(**cfg, seed=int(wc.seed))
summary = train_tsft(
    read_table(snakemake.input.dataset),
    job.dataset(),
    snakemake.input.model,
    job.model(),
    None if variant == "train_zero_shot" else spaces[settings.layer],
    settings,
    snakemake.output[0],
    **job["taskspace"],
    # outside the output directory (Snakemake deletes it before a retry), keyed by settings + code
    checkpoint_dir=checkpoint_dir("tsft", job.wildcards, snakemake.params.settings, snakemake.params.code),
)
log.info("TS-FT %s: %s", wc.arm, summary)
