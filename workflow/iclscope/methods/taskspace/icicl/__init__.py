"""IC-ICL: retrieved demonstrations compressed into the task space, against full-text ICL.

A reconstruction of Yang et al. 2025 (docs/methods.md §1.4; the paper's details are unknown, every
choice is a setting recorded with the results, and chosen on a validation split by `sweep_icicl`).
For each input the same k demonstrations are retrieved from a fixed pool (top-k cosine of
mean-pooled states, or random), then fed to the model in several ways ("arms"), each predicting
by argmax over the label words:

  zero_shot     the test input alone                        (cost: |x| tokens)
  full_icl      the k demonstrations as text, then the input (cost: k·|demo| + |x|)
  icicl_soft    per demonstration one *soft token* ĥ_j = μ + Bᵀ B (h_j − μ): its state h_j at the
                injection layer l (`state`: its last token, its label token, or the mean over its
                text) projected onto the task space and back, written into the residual stream at
                layer l, followed by its label line as text unless `label_line` is off
                (cost: k·(1 + |label line|) + |x|)
  icicl_identity  icicl_soft without compression (ĥ_j = h_j), to separate the effect of the
                task-space projection from that of the soft-token format
  task_vector   zero-shot prompt with the query state at layer l replaced by the mean of the k
                demonstrations' states (task/function vectors; cost: |x|)
  anchor_kv     iclscope's retrieval variant of Hidden_anchor: each demonstration run alone and kept
                only as the keys/values of its template and label tokens (AnchorKV), the query
                continuing that cache. The paper's own setting is the anchor_compression stage.
and the equally short anchor-only baselines of docs/methods.md §3.7 (Table 2 of Wang et al. 2023):
  text_anchor   the demonstrations' template + label *text* with the input text removed
                ('Tweet: \nSentiment: negative\n'), then the query, as plain tokens
  hidden_random anchor_kv with each label token's KV replaced by the KV of one random token of
                that demonstration's input text (seeded); `random_draws` draws, reported as their
                mean, and as hidden_random_top, the draw with the best label loyalty (named in the table)

Task spaces (`task_space`): "pool" is fitted on the pool demonstrations' own states at layer l
(the states it compresses: class means of the pool's labels, PCA-denoised as the task-space
stage does); "class_mean" / "anchor" are the task-space stage's, fitted on other distributions
(k-shot query states of train prompts / label words in carrier sentences).

Accuracy, label loyalty (same predicted label as full_icl) and word loyalty (Jaccard of the
top-`word_k` vocabulary ids, §3.3) come from batched forward passes over every test input. The
§3.8 timing protocol (batch 1, no padding, warm-up, median over repeats) runs on a fixed random
sample of `n_timed` inputs. Every arm is compared with full_icl on the same inputs by a paired
bootstrap interval of the accuracy difference and McNemar's exact test (iclscope.core.stats).

Pool demonstrations are run once and their states cached (the pool is fixed; retrieval only
picks), so their one-time cost is reported apart, as docs/methods.md §3.8 does for anchor caches.

The package by concern: `settings` (ICICLSettings, SweepGrid and its budget, every arm's settings),
`arms` (retrieval, the arms' prompts, ICICLRun: the model, the pool and its states), `anchor_kv`
(anchor_kv's and hidden_random's caches), `evaluate` (evaluate_icicl: the test split, timing), `sweep` (sweep_icicl:
the validation split), `tables` (summary, paired comparisons, the metric table).
Running prompts and KV caches is iclscope.model.scoring, shared with anchor compression.
"""
