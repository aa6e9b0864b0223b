# The lab store (iclscope.core.lab_store; docs/cluster.md, "Sharing activations across a lab"): a
# product whose recipe key is stored is linked into results/ by a local rule before any job is
# scheduled, so a fully stored plan submits no cluster job; a miss falls through to the rule that
# computes it, whose job publishes its output into the store. The store is $ICLSCOPE_STORE; without it there are no
# link rules and every product is computed as before.
#
# A link rule has the params of its computing rule and no input made in this checkout: a linked
# file carries its store entry's date, older than a model manifest or a prompt table made here
# today, so such an input would rerun the link (and everything downstream) on the next call, and
# Snakemake's touch of the link would re-date the entry for every checkout that links it. The key
# covers what those inputs hold. (A gathered file keeps its shards, themselves links.) A result
# made by the computing job (and published) stays with the computing rule
# (lab_store.Links.input_of), so that what Snakemake recorded for it still holds.
from iclscope.core import lab_store  # noqa: E402

STORE = lab_store.Links(JOB_CONFIG, lab_store.configured_store())
store_of = STORE.params_of  # params.store of a computing rule and of its link rule
stored = STORE.input_of  # the input function of a link rule
# A link job is a shell job (Snakemake runs each `run:` job as a new Snakemake process, seconds
# apiece). Its command's text is what Snakemake records as the rule's code, so the store and the
# script come in as resources (never compared for reruns), the same text in every checkout.
LINK = "bash {resources.store_link:q} {resources.store:q} {params.store:q} {output:q} > {log:q} 2>&1"
LINK_RESOURCES = {"store": str(STORE.store), "store_link": str(Path(workflow.basedir) / "workflow" / "scripts" /
                                                               "store_link.sh")}

EXTRACT_OUTPUT = ("results/activations/{model}/{dataset}.h5" if SHARDS == 1
                  else "results/activations/{model}/{dataset}.shards/{scatteritem}.h5")

if STORE.store is not None:

    rule link_prepare_model:
        """Link a stored prepared model."""
        input:
            stored("prepare_model", "results/models/{model}"),
        output:
            directory("results/models/{model}"),
        params:
            settings=settings_of("prepare_model"),
            code=code_of("prepare_model.py"),
            store=store_of("prepare_model"),
        log:
            "logs/store/prepare_model/{model}.log",
        conda:
            "../envs/iclscope.yaml"
        resources:
            **LINK_RESOURCES,
        localrule: True
        shell:
            LINK

    rule link_prepare_dataset:
        """Link a stored prepared dataset."""
        input:
            stored("prepare_dataset", "results/datasets/{dataset}.parquet"),
        output:
            "results/datasets/{dataset}.parquet",
        params:
            settings=settings_of("prepare_dataset"),
            code=code_of("prepare_dataset.py"),
            store=store_of("prepare_dataset"),
        log:
            "logs/store/prepare_dataset/{dataset}.log",
        conda:
            "../envs/iclscope.yaml"
        resources:
            **LINK_RESOURCES,
        localrule: True
        shell:
            LINK

    rule link_extract:
        """Link a stored activation file (or one shard of it)."""
        input:
            stored("extract", EXTRACT_OUTPUT),
        output:
            EXTRACT_OUTPUT,
        params:
            settings=settings_of("extract"),
            code=code_of("extract.py"),
            shard=lambda wc: "-of-".join(map(str, shard_of(wc))),
            store=store_of("extract"),
        log:
            (
                "logs/store/extract/{model}/{dataset}.log"
                if SHARDS == 1
                else "logs/store/extract/{model}/{dataset}.{scatteritem}.log"
            ),
        conda:
            "../envs/iclscope.yaml"
        resources:
            **LINK_RESOURCES,
        localrule: True
        shell:
            LINK

    ruleorder: link_prepare_model > prepare_model
    ruleorder: link_prepare_dataset > prepare_dataset
    ruleorder: link_extract > extract

    if SHARDS > 1:

        rule link_gather_activations:
            """Link a stored gathered activation file (its shards are linked by link_extract)."""
            input:
                stored("gather_activations", "results/activations/{model}/{dataset}.h5", lambda wc: [
                    f"results/activations/{wc.model}/{wc.dataset}.shards/{i}-of-{SHARDS}.h5"
                    for i in range(1, SHARDS + 1)]),
            output:
                "results/activations/{model}/{dataset}.h5",
            params:
                code=code_of("gather_activations.py"),
                store=store_of("gather_activations"),
            log:
                "logs/store/gather_activations/{model}/{dataset}.log",
            conda:
                "../envs/iclscope.yaml"
            resources:
                **LINK_RESOURCES,
            localrule: True
            shell:
                LINK

        ruleorder: link_gather_activations > gather_activations

    rule link_token_states:
        """Link stored token states."""
        input:
            stored("token_states", "results/activations/{model}/{dataset}.tokens.h5"),
        output:
            "results/activations/{model}/{dataset}.tokens.h5",
        params:
            settings=settings_of("token_states"),
            code=code_of("token_states.py"),
            store=store_of("token_states"),
        log:
            "logs/store/token_states/{model}/{dataset}.log",
        conda:
            "../envs/iclscope.yaml"
        resources:
            **LINK_RESOURCES,
        localrule: True
        shell:
            LINK

    rule link_extract_anchors:
        """Link stored anchor states."""
        input:
            stored("extract_anchors", "results/activations/{model}/{dataset}.anchors.h5"),
        output:
            "results/activations/{model}/{dataset}.anchors.h5",
        params:
            settings=settings_of("extract_anchors"),
            code=code_of("extract_anchors.py"),
            store=store_of("extract_anchors"),
        log:
            "logs/store/extract_anchors/{model}/{dataset}.log",
        conda:
            "../envs/iclscope.yaml"
        resources:
            **LINK_RESOURCES,
        localrule: True
        shell:
            LINK

    ruleorder: link_token_states > token_states
    ruleorder: link_extract_anchors > extract_anchors
