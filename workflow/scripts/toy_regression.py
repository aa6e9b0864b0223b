import shutil
from pathlib import Path

from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import write_table
from iclscope.data.synthetic import SparseRegressionTask
from iclscope.methods.decodability.toy_regression import RegressionTraining, regression_table, train_regression
from iclscope.model.models import resolve_device

log = log_to(snakemake.log[0], threads=snakemake.threads)
settings = job_of(snakemake)["toy_regression"]
cfg = dict(settings)
task = SparseRegressionTask(**{k: cfg.pop(k) for k in ("dim", "n_bases", "basis_size", "n_points", "noise_var")})
run = RegressionTraining(**cfg)
resume_dir = Path("results/toy/regression/resume")  # training state of a killed run
weights = resume_dir / "weights"  # moved to the declared output when training is done
table = train_regression(task, run, resolve_device("auto"), resume_dir=resume_dir, weights_dir=weights)
table = regression_table(table, task)
shutil.rmtree(snakemake.output.weights, ignore_errors=True)
weights.rename(snakemake.output.weights)
write_table(table, snakemake.output.table, {"toy_regression": settings})
log.info(
    "test MSE by basis and step:\n%s",
    table[table.metric == "mse"].pivot_table(index="step", columns="task", values="value").round(4).to_string(),
)
log.info(
    "basis decodability by layer and step:\n%s",
    table[table.metric == "decodability"]
    .pivot_table(index="step", columns="layer", values="value")
    .round(3)
    .to_string(),
)
