"""Where IC-ICL's time goes (issue 30.3): evaluate_icicl on the default config (SmolLM2-135M, tweets),
wall and CPU seconds per section (each batched arm, the anchor caches, the pool and retrieval
passes, the batch-1 timing rounds), written to results/benchmarks/icicl_profile.json.

    python -m tests.benchmarks.icicl_profile [--n-test 300] [--n-timed 16] [--threads 2] [--before]

`--before` runs the two passes this issue cut the way they ran before: one batch-1 pass per anchor
cache (demonstration x slot) instead of batched ones, and zero_shot scored in a pass of its own
instead of by the retrieval-embedding pass over the same prompts. The task space is "pool" (fitted
here), so no task-space file is needed; the other settings are config.yaml's. CPU seconds are the
measure to compare on a shared machine (wall seconds count the other processes' turns)."""

from __future__ import annotations

import argparse
import collections
import json
import time

from .common import MODEL, OUT, REPO

SECTIONS: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
_open: list[str] = []


def timed(name_of):
    """Wrap a function: its wall and CPU seconds are added to SECTIONS[name] (outermost call only)."""

    def wrap(fn):
        def inner(*args, **kwargs):
            if _open:
                return fn(*args, **kwargs)
            name = name_of(*args, **kwargs) if callable(name_of) else name_of
            _open.append(name)
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                _open.pop()
                got = SECTIONS[name]
                got[0] += time.perf_counter() - wall
                got[1] += time.process_time() - cpu
                got[2] += 1

        return inner

    return wrap


def instrument(before: bool) -> None:
    from iclscope.methods.taskspace.icicl import anchor_kv, arms, evaluate
    from iclscope.model.scoring import PromptScorer

    PromptScorer.score_many = timed(lambda self, prompts, layer=None, desc="score": f"batched {desc}")(
        PromptScorer.score_many
    )
    PromptScorer.states = timed(lambda self, tokens, layers, desc="states": f"states: {desc}")(PromptScorer.states)
    kv = anchor_kv.AnchorKV
    kv.score_many = timed(lambda self, scorer, demos, q, draw=None, desc="": f"batched {desc}")(kv.score_many)
    kv.layers = timed("anchor caches")(kv.layers)
    evaluate.interleaved = timed("timing: batch-1 interleaved rounds")(evaluate.interleaved)
    arms.load_model = timed("load model")(arms.load_model)
    if before:

        def one_by_one(self, pairs, batch_size, max_batch_tokens):
            for j, slot in sorted({(int(j), int(slot)) for j, slot in pairs}):
                self.layers(j, slot)

        batched_inputs = arms.ICICLRun.inputs

        def inputs_then_zero_shot(self, rows):
            got = batched_inputs(self, rows)
            return got._replace(zero_shot=self.scorer.score_many(self.zero_shot_prompts(got), None, desc="zero_shot"))

        kv.build = one_by_one
        arms.ICICLRun.inputs = inputs_then_zero_shot
    kv.build = timed("anchor caches")(kv.build)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=None, help="default: config.yaml's icicl.n_test")
    parser.add_argument("--n-timed", type=int, default=None, help="default: config.yaml's icicl.n_timed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the icicl rule's threads: 2)")
    parser.add_argument("--before", action="store_true", help="the two cut passes as they ran before")
    args = parser.parse_args()

    from iclscope.core import jobs
    from iclscope.core.logs import limit_threads
    from iclscope.core.tables import read_table
    from iclscope.core.validate import load_config
    from iclscope.methods.taskspace.icicl import evaluate
    from iclscope.methods.taskspace.icicl.settings import ICICLSettings, SweepGrid

    limit_threads(args.threads)
    instrument(args.before)
    config = load_config(REPO / "config.yaml")
    wc = {"model": MODEL, "dataset": "tweets"}
    job = jobs.Job(jobs.settings(config, "icicl", wc), wc, jobs.runtime(config, MODEL))
    given = {"n_test": args.n_test, "n_timed": args.n_timed}
    settings = ICICLSettings(
        **{**job["icicl"], "task_space": "pool", **{k: v for k, v in given.items() if v is not None}},
        word_k=job["word_k"],
    )
    grid = SweepGrid(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["sweep"].items()})
    wall, cpu = time.perf_counter(), time.process_time()
    per_example, summary, _ = evaluate.evaluate_icicl(
        read_table(REPO / "results/datasets/tweets.parquet"),
        job.dataset(),
        REPO / f"results/models/{MODEL}.json",
        job.model(),
        {},
        settings,
        **job["taskspace"],
        grid=grid,
    )
    total = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    sections = {k: {"wall": v[0], "cpu": v[1], "calls": v[2]} for k, v in SECTIONS.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"icicl_profile{'_before' if args.before else ''}.json"
    path.write_text(
        json.dumps(
            {
                "settings": vars(args),
                "total": total,
                "sections": sections,
                "predictions": per_example[["test_row", "arm", "draw", "pred"]].values.tolist(),
                "logits": per_example[[c for c in per_example if c.startswith("logit_")]].values.tolist(),
                "summary": summary[["arm", "accuracy", "tokens"]].to_dict("records"),
            },
            default=str,
        )
    )
    for name, v in sorted(sections.items(), key=lambda kv: -kv[1]["cpu"]):
        print(f"{v['cpu']:8.1f} cpu-s {v['wall']:8.1f} wall-s {v['calls']:5d} calls  {name}")
    print(f"total {total['cpu']:.1f} cpu-s, {total['wall']:.1f} wall-s -> {path}")


if __name__ == "__main__":
    main()
