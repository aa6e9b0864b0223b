rule prepare_model:
    """Resolve a model (GGUF in a wheel, hub id, local dir); de-quantise GGUF to safetensors; manifest."""
    output:
        directory("results/models/{model}"),
    params:
        settings=settings_of("prepare_model"),
        code=code_of("prepare_model.py"),
        store=store_of("prepare_model"),
    log:
        "logs/prepare_model/{model}.log",
    conda:
        "../envs/iclscope.yaml"
    resources:
        mem_mb=4000,
    script:
        "../scripts/prepare_model.py"


rule model_manifest:
    """A file copy of the manifest: what model stages depend on (checksummable, cache-safe)."""
    input:
        "results/models/{model}",
    output:
        "results/models/{model}.json",
    log:
        "logs/model_manifest/{model}.log",
    conda:
        "../envs/iclscope.yaml"
    localrule: True
    shell:
        "cp {input}/manifest.json {output} 2> {log}"
