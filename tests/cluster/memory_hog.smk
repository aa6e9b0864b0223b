# A rule that needs ~350 MB (+ ~150 MB for the job's own snakemake process): killed by SLURM
# (OverMemoryKill) with 300 MB, fine with 600 MB.
rule all:
    input:
        "done.txt",


rule hog:
    output:
        "done.txt",
    resources:
        mem_mb=lambda wc, attempt: 300 * attempt,
    log:
        "hog.log",
    shell:
        "python3 -c 'import time; b = bytearray(350 * 2**20); time.sleep(8)' 2> {log} && echo {resources.mem_mb} > {output}"
