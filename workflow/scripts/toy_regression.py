import pandas as pd

from iclscope.logs import log_to
from iclscope.models import resolve_device
from iclscope.synthetic import SparseRegressionTask
from iclscope.tables import write_table
from iclscope.toy_regression import RegressionTraining, reference_rows, train_regression

log = log_to(snakemake.log[0])
cfg = dict(snakemake.config["toy_regression"])
cfg.pop("enabled")
task = SparseRegressionTask(**{k: cfg.pop(k) for k in ("dim", "n_bases", "basis_size", "n_points", "noise_var")})
run = RegressionTraining(**cfg)
table = train_regression(task, run, resolve_device("auto"), resume_dir="results/toy/regression/resume")
table = pd.concat([table, pd.DataFrame(reference_rows(task))], ignore_index=True)
write_table(table, snakemake.output[0], {"toy_regression": snakemake.config["toy_regression"]})
log.info("test MSE by basis and step:\n%s", table[table.metric == "mse"].pivot_table(
    index="step", columns="task", values="value").round(4).to_string())
log.info("basis decodability by layer and step:\n%s", table[table.metric == "decodability"].pivot_table(
    index="step", columns="layer", values="value").round(3).to_string())
