from iclscope.core.job import job_of
from iclscope.core.logs import log_to
from iclscope.core.tables import read_table, write_table
from iclscope.model.models import load_tokenizer
from iclscope.model.prompts import build_prompts

log_to(snakemake.log[0], threads=snakemake.threads)
tokenizer, manifest = load_tokenizer(snakemake.input.model)
spec = job_of(snakemake).dataset()
table, meta = build_prompts(read_table(snakemake.input.dataset), spec, tokenizer, manifest["context_length"])
write_table(table, snakemake.output[0], {**meta, "model": snakemake.wildcards.model})
