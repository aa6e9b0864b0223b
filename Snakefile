# iclscope: how language models learn in context.  `make run` runs this with profiles/local;
# on a cluster: snakemake --profile profiles/slurm.  The stages are in workflow/rules/,
# the logic in workflow/iclscope/ (see README.md).
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default run. A --configfile stands alone instead of being merged into it (an
# example config plans exactly its own models and datasets); an overlay names config.yaml first:
#   snakemake --configfile config.yaml my-overlay.yaml
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/store.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/extract.smk"
# the method families' rules, each file once (iclscope/core/families.py names each family's file)
for _rules_file in RULES_FILES:

    include: f"workflow/rules/{_rules_file}"


include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
