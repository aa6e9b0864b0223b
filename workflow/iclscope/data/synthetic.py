"""Task families (Han et al., docs/methods.md §4.3–4.4 and §8).

Each family generator returns a DataFrame with `text` (input x), `label` (answer y) and `task`.
Tasks of one family share their inputs, so only the demonstrations reveal the task.

* bitwise arithmetic: two 5-bit operands, AND/NAND/OR/NOR/XOR/XNOR + Null (random bits);
* POS: a tagged sentence, the first word with the hidden tag (Noun, Adjective, Verb, Adverb,
  Preposition, Pronoun) + Null (a random word of the sentence); the sentences come from a
  treebank (iclscope.data.datasets reads CoNLL-U files and hub tables);
* word transformations: first/last letter, uppercase, repeat, reverse, capitalise + Null
  (a random other word) — the family a 135M model can do in context;
* word categories (a classification task): a word of iclscope.data.lexicon and its category
  (animal, food, country, job);
* sparse linear regression: the toy task the small transformer of iclscope.toy learns.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from iclscope.core.config import POS_TASK_TAGS

BITWISE_TASKS = ("AND", "NAND", "OR", "NOR", "XOR", "XNOR", "Null")
WORD_TASKS = ("first_letter", "last_letter", "uppercase", "repeat", "reverse", "capitalise", "Null")

_BITWISE = {
    "AND": lambda a, b: a & b,
    "NAND": lambda a, b: ~(a & b),
    "OR": lambda a, b: a | b,
    "NOR": lambda a, b: ~(a | b),
    "XOR": lambda a, b: a ^ b,
    "XNOR": lambda a, b: ~(a ^ b),
}


def apply_bitwise(op: str, a: str, b: str) -> str:
    """The n-bit result of `op` on two n-bit binary strings ('01011', '10010' -> AND '00010')."""
    if len(a) != len(b):
        raise ValueError(f"operands differ in width: {a!r}, {b!r}")
    n = len(a)
    value = _BITWISE[op](int(a, 2), int(b, 2)) & ((1 << n) - 1)
    return format(value, f"0{n}b")


def bitwise_examples(n_per_task: int, seed: int, n_bits: int = 5) -> pd.DataFrame:
    """n_per_task distinct operand pairs, the same pairs for every task; Null answers are random bits."""
    rng = np.random.default_rng(seed)
    space = 1 << (2 * n_bits)
    if n_per_task > space:
        raise ValueError(f"only {space} distinct {n_bits}-bit operand pairs; lower n_per_task ({n_per_task})")
    codes = rng.choice(space, n_per_task, replace=False)
    pairs = [(format(c >> n_bits, f"0{n_bits}b"), format(c & ((1 << n_bits) - 1), f"0{n_bits}b")) for c in codes]
    rows = []
    for task in BITWISE_TASKS:
        for a, b in pairs:
            if task == "Null":
                y = "".join(rng.choice(["0", "1"], n_bits))
            else:
                y = apply_bitwise(task, a, b)
            rows.append({"text": f"{a} {b}", "label": y, "task": task})
    return pd.DataFrame(rows)


# Han et al.'s six tags: UPOS names, or Penn Treebank tags (PTB data, CoNLL-U column 5 of English UD)
POS_TASKS = (*POS_TASK_TAGS["upos"], "Null")


def tag_matches(tag: str | None, patterns: Sequence[str]) -> bool:
    return tag is not None and any(fnmatch.fnmatchcase(tag, p) for p in patterns)


def pos_examples(
    sentences: Sequence[tuple[Sequence[str], Sequence[str | None]]], task_tags: dict, n_per_task: int, seed: int
) -> tuple[pd.DataFrame, dict]:
    """Han et al.'s POS family on tagged sentences [(words, tags)].

    Keeps the sentences with a word for every task (tag patterns as in TaggingSettings), draws
    `n_per_task` of them with `seed` (the same for every task), text = the words joined by single
    spaces; answer = the first word whose tag matches the task, Null = a seeded random word
    (tokens with a letter or digit: punctuation is not a word). Returns (rows, counts) where
    counts says how many sentences had each task's tag. Raises ValueError naming the tags when
    none or too few sentences qualify.
    """
    unused = [
        (t, p)
        for t, pats in task_tags.items()
        for p in pats
        if not any(tag_matches(tag, [p]) for _, tags in sentences for tag in tags)
    ]
    if unused:
        seen = sorted({tag for _, tags in sentences for tag in tags if tag is not None})
        task, pattern = unused[0]
        raise ValueError(
            f"unknown tag: tagging.tasks.{task} names {pattern!r}, which no word of the "
            f"{len(sentences)} sentences carries; their tags are {seen}"
        )
    has = {t: 0 for t in task_tags}
    kept, seen_texts, duplicates = [], set(), 0
    for words, tags in sentences:
        firsts = {}
        for task, patterns in task_tags.items():
            firsts[task] = next((w for w, tag in zip(words, tags, strict=True) if tag_matches(tag, patterns)), None)
            has[task] += firsts[task] is not None
        if any(v is None for v in firsts.values()):
            continue
        text = " ".join(words)
        if text in seen_texts:
            duplicates += 1
            continue
        seen_texts.add(text)
        kept.append((text, list(words), firsts))
    counts = {
        "sentences": len(sentences),
        "with_tag": has,
        "with_all_tags": len(kept) + duplicates,
        "duplicates": duplicates,
    }
    wanted = ", ".join(f"{t} {'/'.join(p)}" for t, p in task_tags.items())
    if not kept:
        raise ValueError(
            f"none of the {len(sentences)} sentences has a word for every task ({wanted}); sentences with each: {has}"
        )
    if len(kept) < n_per_task:
        raise ValueError(
            f"only {len(kept)} distinct sentences of {len(sentences)} have a word for every task "
            f"({wanted}; sentences with each: {has}), fewer than n_per_task={n_per_task}; lower "
            "n_per_task or use a larger treebank"
        )
    rng = np.random.default_rng(seed)
    chosen = [kept[i] for i in rng.choice(len(kept), n_per_task, replace=False)]
    rows = []
    for task in (*task_tags, "Null"):
        for text, words, firsts in chosen:
            if task == "Null":
                pool = [w for w in words if any(c.isalnum() for c in w)] or words
                y = pool[int(rng.integers(len(pool)))]
            else:
                y = firsts[task]
            rows.append({"text": text, "label": y, "task": task})
    return pd.DataFrame(rows), counts


def apply_word_task(task: str, word: str) -> str:
    """The answer of a (non-Null) word task."""
    return {
        "first_letter": lambda w: w[0],
        "last_letter": lambda w: w[-1],
        "uppercase": str.upper,
        "repeat": lambda w: f"{w} {w}",
        "reverse": lambda w: w[::-1],
        "capitalise": str.capitalize,
    }[task](word)


def vocabulary_from_texts(
    texts: Iterable[str], min_len: int = 3, max_len: int = 8, min_count: int = 2, max_words: int = 2000, seed: int = 0
) -> list[str]:
    """Lower-case purely alphabetic words of a corpus, frequency-filtered, sorted (seeded sample if many)."""
    counts = Counter(w for t in texts for w in re.findall(r"(?<![\w@#'])[a-z]+(?![\w'])", str(t).lower()))
    words = sorted(w for w, n in counts.items() if n >= min_count and min_len <= len(w) <= max_len)
    if not words:
        raise ValueError(
            f"no word of {min_len}-{max_len} letters occurs {min_count}+ times in the corpus; "
            "relax vocabulary.min_len / max_len / min_count"
        )
    if len(words) > max_words:
        keep = np.random.default_rng(seed).choice(len(words), max_words, replace=False)
        words = [words[i] for i in sorted(keep)]
    return words


def word_examples(vocabulary: Sequence[str], n_per_task: int, seed: int) -> pd.DataFrame:
    """n_per_task words (the same for every task) with each task's answer; Null = a random other word."""
    vocabulary = list(dict.fromkeys(vocabulary))
    if len(vocabulary) < max(2, n_per_task):
        raise ValueError(
            f"vocabulary has {len(vocabulary)} words, fewer than n_per_task={n_per_task}; lower "
            "n_per_task or relax the vocabulary filters"
        )
    rng = np.random.default_rng(seed)
    words = [vocabulary[i] for i in rng.choice(len(vocabulary), n_per_task, replace=False)]
    rows = []
    for task in WORD_TASKS:
        for w in words:
            if task == "Null":
                other = w
                while other == w:
                    other = vocabulary[int(rng.integers(len(vocabulary)))]
                y = other
            else:
                y = apply_word_task(task, w)
            rows.append({"text": w, "label": y, "task": task})
    return pd.DataFrame(rows)


def category_examples(categories: dict[str, Sequence[str]]) -> pd.DataFrame:
    """One row per word of each category: text = the word, label = its category (the known answer;
    iclscope.data.lexicon). Refuses a word listed under two categories (case-insensitively)."""
    rows = [{"text": w, "label": c} for c, words in categories.items() for w in words]
    seen = Counter(r["text"].lower() for r in rows)
    twice = sorted(w for w, n in seen.items() if n > 1)
    if twice:
        raise ValueError(f"words listed more than once (the category must be unique): {twice[:10]}")
    return pd.DataFrame(rows, columns=["text", "label"])


@dataclass(frozen=True)
class SparseRegressionTask:
    """Mixture of sparse linear regressions (docs/methods.md §4.3): y = w_Bᵀx + ε, basis B hidden.

    x ~ N(0, I_dim); w ~ N(0, I_dim) masked to one of `n_bases` disjoint blocks of `basis_size`
    coordinates (chosen uniformly per sequence); ε ~ N(0, noise_var); `n_points` pairs per sequence.
    """

    dim: int = 16
    n_bases: int = 4
    basis_size: int = 4
    n_points: int = 20
    noise_var: float = 0.01

    def __post_init__(self):
        if self.n_bases * self.basis_size > self.dim:
            raise ValueError(f"{self.n_bases} bases of {self.basis_size} coordinates do not fit in dim={self.dim}")
        if min(self.dim, self.n_bases, self.basis_size, self.n_points) < 1 or self.noise_var < 0:
            raise ValueError(f"invalid SparseRegressionTask {self}")

    @property
    def bases(self) -> list[np.ndarray]:
        return [np.arange(i * self.basis_size, (i + 1) * self.basis_size) for i in range(self.n_bases)]

    def sample(self, batch: int, rng: np.random.Generator, return_weights: bool = False):
        """xs [batch, n_points, dim], ys [batch, n_points], basis_id [batch] (+ w [batch, dim])."""
        xs = rng.standard_normal((batch, self.n_points, self.dim)).astype(np.float32)
        basis_id = rng.integers(0, self.n_bases, batch)
        mask = np.zeros((batch, self.dim), dtype=np.float32)
        for b, k in enumerate(basis_id):
            mask[b, self.bases[k]] = 1.0
        w = rng.standard_normal((batch, self.dim)).astype(np.float32) * mask
        ys = np.einsum("bnd,bd->bn", xs, w)
        if self.noise_var:
            ys = ys + rng.normal(0, np.sqrt(self.noise_var), ys.shape).astype(np.float32)
        out = (xs, ys.astype(np.float32), basis_id.astype(np.int64))
        return (*out, w) if return_weights else out


def optimal_mse_reference(
    task: SparseRegressionTask, n_examples_seen: int, n_sequences: int = 2000, ridge: float | None = None, seed: int = 0
) -> dict:
    """Monte Carlo test MSE (against noisy targets) of ridge regression after `n_examples_seen` pairs.

    'basis_known': regression on the true basis's `basis_size` coordinates (the task inferred),
    which reaches noise_var once n > basis_size; 'basis_unknown': regression on all `dim`
    coordinates, small only once n approaches dim. The default ridge = noise_var makes each the
    Bayes-optimal estimate under w ~ N(0, I) (plain least squares, ridge → 0, spikes at n = r and
    n = D, the interpolation threshold). Cost O(n_sequences · dim³): about a second.
    """
    ridge = max(task.noise_var, 1e-6) if ridge is None else ridge
    n = n_examples_seen
    xs, ys, basis_id = replace(task, n_points=n + 1).sample(n_sequences, np.random.default_rng(seed))
    xs, ys = xs.astype(np.float64), ys.astype(np.float64)
    errs = {"basis_known": [], "basis_unknown": []}
    for b in range(n_sequences):
        X, y, x_new, y_new = xs[b, :n], ys[b, :n], xs[b, n], ys[b, n]
        for name, cols in (("basis_known", task.bases[basis_id[b]]), ("basis_unknown", np.arange(task.dim))):
            w_hat = np.zeros(task.dim)
            if n:
                A = X[:, cols]
                w_hat[cols] = np.linalg.solve(A.T @ A + ridge * np.eye(len(cols)), A.T @ y)
            errs[name].append((x_new @ w_hat - y_new) ** 2)
    return {
        "basis_known": float(np.mean(errs["basis_known"])),
        "basis_unknown": float(np.mean(errs["basis_unknown"])),
        "n_examples_seen": n,
        "noise_var": task.noise_var,
    }
