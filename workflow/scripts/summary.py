from collections import defaultdict
from pathlib import Path

import pandas as pd

from iclscope.core.atomic import written
from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import read_meta
from iclscope.report.atlas import headline
from iclscope.report.claims import (
    claims_table,
    icicl_pairs,
    icicl_settings,
    icicl_timing,
    reweighting_pairs,
    tsft_pairs,
    with_settings,
)

log = log_to(snakemake.log[0], threads=snakemake.threads)
job = job_of(snakemake)
# results/metrics/<model>/<dataset>/<family>.parquet: only this job's inputs, never a table left
# over from another configuration
tables = defaultdict(list)
for path in snakemake.input.tables:
    tables[Path(path).parent.parent.name, Path(path).parent.name].append(path)
table = pd.DataFrame([headline(tables[m, d], m, d) for m, d in sorted(tables)])
peaks = pd.concat([pd.read_parquet(p) for p in snakemake.input.peaks], ignore_index=True)
peak_layers = peaks.pivot_table(index=["model", "dataset"], columns="curve", values="layer")

# the claims per dataset and pooled over datasets, per model (iclscope.report.claims)
pairs, timing, settings = defaultdict(lambda: defaultdict(dict)), defaultdict(dict), defaultdict(dict)
for path in map(Path, snakemake.input.predictions):  # results/icicl/<model>/<dataset>/predictions.parquet
    pairs[path.parent.parent.name][path.parent.name] |= icicl_pairs(pd.read_parquet(path))
runs = defaultdict(list)
for path in map(Path, snakemake.input.tsft_runs):  # results/tsft/<model>/<dataset>/<arm>-seed<seed>
    runs[path.parent.parent.name, path.parent.name].append(path)
for (model, dataset), dirs in runs.items():
    pairs[model][dataset] |= tsft_pairs(dirs)
for (model, dataset), paths in tables.items():
    for path in map(Path, paths):
        if path.stem == "reweighting":
            pairs[model][dataset] |= reweighting_pairs(read_meta(path))
        elif path.stem == "icicl":
            timing[model][dataset] = icicl_timing(pd.read_parquet(path))
            settings[model][dataset] = icicl_settings(read_meta(path))  # each tuned arm's, per dataset
claims = [claims_table(pairs[m], model=m, n_boot=job["n_boot"], timing=timing[m]) for m in sorted(pairs)]
claims = with_settings(
    pd.concat(claims, ignore_index=True)
    if claims
    else pd.DataFrame(columns=["model", "dataset", "arm", "seed", "metric", "value", "ci_low", "ci_high"]),
    settings,
)

with written(snakemake.output.headline) as tmp:
    table.to_csv(tmp, index=False, float_format="%.4g")
with written(snakemake.output.peaks) as tmp:
    peak_layers.to_csv(tmp, float_format="%.3g")
with written(snakemake.output.claims) as tmp:
    claims[["model", "dataset", "arm", "seed", "metric", "value", "ci_low", "ci_high", "settings"]].to_csv(
        tmp, index=False, float_format="%.4g"
    )
log.info("headline:\n%s\npeak layers:\n%s", table.to_string(index=False), peak_layers.to_string())
log.info(
    "claims (per dataset and pooled):\n%s",
    claims.pivot_table(index=["model", "arm", "dataset"], columns="metric", values="value").round(4).to_string()
    if len(claims)
    else "",
)
