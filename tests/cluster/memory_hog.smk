# A rule that needs ~300 MB: killed by SLURM (OverMemoryKill) under 200 MB, fine with 400 MB.
rule all:
    input:
        "done.txt",


rule hog:
    output:
        "done.txt",
    resources:
        mem_mb=lambda wc, attempt: 200 * attempt,
    log:
        "hog.log",
    shell:
        "python3 -c 'import time; b = bytearray(300 * 2**20); time.sleep(8)' 2> {log} && echo {resources.mem_mb} > {output}"
