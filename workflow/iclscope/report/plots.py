"""Figures, each from metric tables (or one activation file), saved as stand-alone PNGs.

One style for all: layer on the x-axis where it applies, one colour per series, the model and
dataset in the title. Never loads a model.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from iclscope.core.atomic import written  # noqa: E402

STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


def _save(fig, path) -> None:
    fig.tight_layout()
    with written(path) as tmp:  # legends placed beside an axes stay inside the image
        fig.savefig(tmp, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def _title(df: pd.DataFrame, what: str) -> str:
    return f"{what} — {df['model'].iloc[0]} / {df['dataset'].iloc[0]}"


def plot_compression(table: pd.DataFrame, path) -> None:
    """Per layer: decoding accuracy, energy ratio and I(C;Y)/H(Y), per variant and position."""
    with plt.rc_context(STYLE):
        metrics = [
            ("decoding_accuracy", "task decoding accuracy"),
            ("energy_ratio", "task-space energy ratio"),
            ("mutual_information_norm", "I(Ĉ;Y) / H(Y)"),
        ]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
        for ax, (metric, label) in zip(axes, metrics, strict=True):
            sub = table[table.metric == metric]
            for (variant, position), g in sub.groupby(["variant", "position"]):
                g = g.sort_values("layer")
                ax.plot(
                    g["layer"],
                    g["value"],
                    marker=".",
                    ms=3,
                    label=f"{variant} · {position}",
                    ls="-" if variant == "class_mean" else "--",
                )
            ax.set_xlabel("layer (residual index)")
            ax.set_ylabel(label)
        axes[0].legend(ncol=1)
        fig.suptitle(_title(table, "Compression into the task space"))
        _save(fig, path)


def plot_task_space(table: pd.DataFrame, path) -> None:
    """The test queries in 2-D by class and the class prototypes (stars), from the task-space view the
    compression job writes (iclscope.methods.taskspace.view: x = first task-space coordinate, y = as
    `y_axis` says)."""
    queries, prototypes = table[table.kind == "query"], table[table.kind == "prototype"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5, 4))
        for name in prototypes["class"]:
            sel = queries[queries["class"] == name]
            ax.scatter(sel["x"], sel["y"], s=10, alpha=0.7, label=name)
        ax.scatter(prototypes["x"], prototypes["y"], marker="*", s=150, c="k", label="prototypes")
        ax.set_xlabel("task-space coordinate 1")
        ax.set_ylabel(table["y_axis"].iloc[0])
        ax.legend()
        ax.set_title(_title(table, f"Task space ({table['variant'].iloc[0]}), layer {int(table['layer'].iloc[0])}"))
        _save(fig, path)


def plot_icicl(table: pd.DataFrame, path) -> None:
    """Left: accuracy (95 % bootstrap interval) against seconds per example, one marker per arm.
    Middle: each arm's accuracy minus full-text ICL's on the same inputs, paired bootstrap
    interval, McNemar p in the label. Right: label and word loyalty against full-text ICL."""
    pair = table["arm"].str.contains("-", regex=False)  # paired comparisons: arm "<arm>-<reference>"
    wide = table[~pair].pivot_table(index="arm", columns="metric", values="value")
    ci = table[~pair & (table.metric == "accuracy")].set_index("arm")[["ci_low", "ci_high"]]
    diffs = table[pair & (table.metric == "accuracy_diff")]
    diffs = diffs.assign(
        task=diffs["arm"].str.split("-", n=1).str[0], reference=diffs["arm"].str.split("-", n=1).str[1]
    )
    p_kind = "p_holm" if (pair & (table.metric == "p_holm")).any() else "p_value"  # adjusted if any
    p_values = table[pair & (table.metric == p_kind)].set_index("arm")["value"]
    p_name = "p_Holm" if p_kind == "p_holm" else "p"
    loyal = [m for m in ("label_loyalty", "word_loyalty") if m in wide]
    panels = 1 + (len(diffs) > 0) + bool(loyal)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
        ax = axes[0, 0]
        # one marker and colour per arm, named in the legend: arms at the same accuracy and speed
        # would print their labels over each other
        markers = "osD^vP*Xph<>"
        for i, (arm, row) in enumerate(wide.iterrows()):
            colour = plt.cm.tab10(i % 10)
            x = row["seconds_per_example"] * 1000
            if arm in ci.index and ci.loc[arm].notna().all():
                ax.errorbar(
                    x,
                    row["accuracy"],
                    yerr=[[row["accuracy"] - ci.at[arm, "ci_low"]], [ci.at[arm, "ci_high"] - row["accuracy"]]],
                    color=colour,
                    alpha=0.5,
                    capsize=2,
                    lw=1,
                )
            ax.scatter(
                x,
                row["accuracy"],
                s=90 - 5 * i,
                marker=markers[i % len(markers)],
                facecolors="none",
                edgecolors=colour,
                linewidths=1.6,
                label=f"{arm} ({row['tokens']:.0f} tok)",
            )
        n = int(wide["n"].max()) if "n" in wide else None
        ax.set_xlabel("median wall-clock per example (ms, batch 1, timed sample)")
        ax.set_ylabel("accuracy" + (f" ({n} test inputs, 95 % CI)" if n else ""))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15), ncol=2, frameon=False)
        col = 1
        if len(diffs):
            # every arm against full ICL (sorted), then icicl_soft against its other references
            ax = axes[0, col]
            col += 1
            d = pd.concat(
                [
                    diffs[diffs.reference == "full_icl"].sort_values("value"),
                    diffs[diffs.reference != "full_icl"].sort_values("value"),
                ]
            )
            y = np.arange(len(d))[::-1]
            colours = np.where(d["reference"] == "full_icl", "C0", "C1")
            for yi, (_, r), c in zip(y, d.iterrows(), colours, strict=True):
                ax.errorbar(
                    r["value"],
                    yi,
                    xerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                    fmt="o",
                    color=c,
                    capsize=3,
                )
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(
                y,
                [f"{r.task} − {r.reference}  ({p_name} = {p_values.get(r.arm, np.nan):.2g})" for r in d.itertuples()],
                fontsize=7,
            )
            ax.set_xlabel("accuracy difference on the same inputs (paired 95 % CI)")
        if loyal:
            ax = axes[0, col]
            arms = wide.sort_values("label_loyalty", ascending=False).index
            names = [
                f"{a} (draw {wide.loc[a, 'draw']:.0f})" if "draw" in wide and pd.notna(wide.loc[a, "draw"]) else a
                for a in arms
            ]
            width = 0.8 / len(loyal)
            for i, m in enumerate(loyal):
                ax.bar(
                    np.arange(len(arms)) + (i - (len(loyal) - 1) / 2) * width,
                    wide.loc[arms, m],
                    width=width,
                    label=m.replace("_", " "),
                )
            ax.set_xticks(range(len(arms)), names, rotation=35, ha="right")
            ax.set_ylabel("agreement with full-text ICL")
            ax.set_ylim(0, 1.05)
            ax.legend()
        fig.suptitle(_title(table, "IC-ICL and anchor-only compression vs full-text ICL"))
        _save(fig, path)


def plot_icicl_sweep(table: pd.DataFrame, path) -> None:
    """IC-ICL's validation accuracy per setting: rows = demonstration state × task space, columns =
    injection layer × label line; the chosen setting outlined; zero-shot / full ICL in the title."""
    soft = table[table.arm == "icicl_soft"].copy()
    soft["row"] = soft["state"] + " · " + soft["task_space"]
    soft["col"] = "L" + soft["layer"].astype(int).astype(str) + np.where(soft["label_line"], " +label", " no label")
    rows = list(dict.fromkeys(soft["row"]))
    cols = list(dict.fromkeys(soft.sort_values(["label_line", "layer"], ascending=[False, True])["col"]))
    grid = soft.pivot_table(index="row", columns="col", values="accuracy").reindex(index=rows, columns=cols)
    ref = table[table.arm.isin(["zero_shot", "full_icl"])].set_index("arm")["accuracy"]
    if "chosen" in table:  # the other tuned arms at their chosen settings (task_vector, anchor_kv)
        tuned = table[table.chosen & ~table.arm.isin(["icicl_soft"])].set_index("arm")["accuracy"]
        ref = pd.concat([ref, tuned.rename(lambda a: f"{a} (tuned)")])
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3, 0.42 * len(rows) + 1.8))
        image = ax.imshow(grid.to_numpy(float), cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = grid.iat[i, j]
                if pd.notna(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v < np.nanmean(grid.to_numpy(float)) else "black",
                    )
        chosen = soft[soft["chosen"]]
        if len(chosen):
            i, j = rows.index(chosen["row"].iat[0]), cols.index(chosen["col"].iat[0])
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        fig.colorbar(image, ax=ax, label=f"validation accuracy ({int(soft['n_val'].iat[0])} inputs)")
        refs = ", ".join(f"{a} {v:.2f}" for a, v in ref.items())
        ax.set_title(f"IC-ICL validation sweep (red: chosen) — {refs}", fontsize=9)
        _save(fig, path)


def plot_tsft(runs: dict, summary: pd.DataFrame, path, smooth: int = 5) -> None:
    """TS-FT against its λ = 0 baseline. `runs`: {(arm, seed): {"eval_log", "train_log", ...}}
    (iclscope.core.runs.read_runs); `summary`: the tsft metric table.

    Left two panels: the held-out (validation) label cross-entropy and space loss by step, per arm
    the mean over seeds (thick) and each seed (thin); the training cross-entropy only as a running
    mean of `smooth` batches (dotted). Then test accuracy per arm (bar = mean, dots = seeds) and the
    paired gain space − baseline with its bootstrap interval, per seed and pooled, p-value in the title.
    """
    colour = {"space": "C0", "baseline": "C1"}
    arms = [a for a in ("space", "baseline") if any(arm == a for arm, _ in runs)]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), gridspec_kw={"width_ratios": [1.3, 1.3, 0.8, 0.9]})
        for arm in arms:
            logs = [r["eval_log"].sort_values("step") for (a, _), r in sorted(runs.items()) if a == arm]
            for ax, column in ((axes[0], "ce"), (axes[1], "space")):
                for log in logs:
                    ax.plot(log["step"], log[column], color=colour[arm], lw=0.8, alpha=0.4)
                mean = pd.concat(logs).groupby("step")[column].mean()
                ax.plot(
                    mean.index,
                    mean.values,
                    color=colour[arm],
                    lw=2,
                    marker=".",
                    label=f"{arm}, held-out (mean of {len(logs)} seed{'s' * (len(logs) > 1)})",
                )
            train = pd.concat(
                [
                    r["train_log"]
                    .sort_values("step")
                    .assign(ce=lambda t: t["ce"].rolling(smooth, min_periods=1).mean())
                    for (a, _), r in runs.items()
                    if a == arm
                ]
            )
            train = train.groupby("step")["ce"].mean()
            axes[0].plot(
                train.index,
                train.values,
                color=colour[arm],
                ls=":",
                lw=1,
                label=f"{arm}, training (running mean of {smooth} batches)",
            )
        axes[0].set_ylabel("label cross-entropy")
        axes[1].set_ylabel("space loss (held-out)")
        for ax in axes[:2]:
            ax.set_xlabel("step")
        axes[0].legend(fontsize=7)
        acc = summary[summary.metric == "accuracy"]
        for i, arm in enumerate(arms):
            v = acc[acc.arm == arm]["value"]
            axes[2].bar(i, v.mean(), color=colour[arm], width=0.6)
            axes[2].plot(np.full(len(v), i), v, "k.", ms=5)
        axes[2].set_xticks(range(len(arms)), arms)
        axes[2].set_ylabel("test accuracy (bar: mean, dots: seeds)")
        if len(acc):
            axes[2].set_ylim(max(0, acc["value"].min() - 0.1), min(1, acc["value"].max() + 0.05))
        gain = summary[(summary.arm == "space-baseline") & (summary.metric == "gain")].copy()
        title = _title(summary, "TS-FT vs the λ = 0 baseline")
        if len(gain):
            gain["label"] = [("pooled" if pd.isna(s) else f"seed {int(s)}") for s in gain["seed"]]
            gain = pd.concat([gain[gain.seed.notna()].sort_values("seed"), gain[gain.seed.isna()]])
            x = np.arange(len(gain))
            err = np.array([gain["value"] - gain["ci_low"], gain["ci_high"] - gain["value"]]) * 100
            axes[3].errorbar(x, gain["value"] * 100, yerr=np.nan_to_num(err), fmt="o", color="k", capsize=3)
            axes[3].axhline(0, color="grey", lw=0.8)
            axes[3].set_xticks(x, gain["label"])
            axes[3].set_xlim(-0.6, len(gain) - 0.4)
            axes[3].set_ylabel("accuracy gain, space − baseline (points)")
            pooled = summary[(summary.arm == "space-baseline") & summary.seed.isna()].set_index("metric")["value"]
            if {"gain", "gain_lo", "gain_hi", "p_value"} <= set(pooled.index):
                lo, hi = pooled["gain_lo"] * 100, pooled["gain_hi"] * 100
                title += (
                    f"\npooled gain {pooled['gain'] * 100:+.1f} points, 95 % interval [{lo:+.1f}, {hi:+.1f}], "
                    f"p = {pooled['p_value']:.2g}"
                )
        else:
            axes[3].set_axis_off()
        fig.suptitle(title)
        _save(fig, path)


def plot_layer_lora(table: pd.DataFrame, path) -> None:
    """First-n vs last-n layer LoRA: overall task decodability by layer for base / first / last
    (one line style per shot count, adapted blocks shaded), and accuracy per task and condition
    (one panel per shot count, mean over seeds)."""
    conditions = [c for c in ("base", "first", "last") if c in set(table.arm)]
    colour = {c: f"C{i}" for i, c in enumerate(conditions)}
    dec = table[(table.metric == "decodability_euclidean") & (table.task == "all")]
    acc = table[(table.metric == "accuracy") & (table.task != "all")]
    shots = sorted(acc["shots"].dropna().unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 1 + len(shots), figsize=(5 + 4.2 * len(shots), 3.6), squeeze=False)
        ax = axes[0, 0]
        for arm in ("first", "last"):
            written = table[(table.metric == "adapted_block") & (table.arm == arm)]["layer"]
            if len(written):  # the residual indices the adapted blocks write
                ax.axvspan(written.min() - 0.5, written.max() + 0.5, color=colour[arm], alpha=0.08, lw=0)
        styles = ["-", "--", ":", "-."]
        for (condition, k), g in dec.groupby(["arm", "shots"]):
            g = g.groupby("layer", as_index=False)["value"].mean()
            ax.plot(
                g["layer"],
                g["value"],
                color=colour[condition],
                ls=styles[shots.index(k) % 4],
                label=f"{condition}, {k}-shot",
            )
        n_tasks = table[(table.metric == "decodability_euclidean") & (table.task != "all")]["task"].nunique()
        ax.axhline(1 / max(n_tasks, 1), color="grey", lw=0.8, ls=":")
        ax.set_xlabel("layer (residual index); shaded: adapted blocks")
        ax.set_ylabel("task decodability (10-NN, euclidean)")
        ax.legend()
        for ax, k in zip(axes[0, 1:], shots, strict=True):
            wide = acc[acc.shots == k].pivot_table(index="task", columns="arm", values="value")
            wide[[c for c in conditions if c in wide]].plot.bar(
                ax=ax, rot=30, color=[colour[c] for c in conditions if c in wide]
            )
            ax.set_ylim(0, 1)
            ax.set_xlabel("")
            ax.set_ylabel(f"exact-match accuracy, {k}-shot")
            ax.legend(title=None)
        fig.suptitle(_title(table, "LoRA on the first vs the last layers"))
        _save(fig, path)


def plot_decodability(dec: pd.DataFrame, acc: pd.DataFrame, path) -> None:
    """Task decodability per layer (per shot count) and ICL accuracy per task and shot count."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        overall = dec[(dec.task == "all")]
        for (metric, shots), g in overall.groupby(["metric", "shots"]):
            g = g.sort_values("layer")
            (line,) = axes[0].plot(
                g["layer"],
                g["value"],
                label=f"{metric.split('_')[-1]}, {shots}-shot",
                ls="-" if metric.endswith("euclidean") else "--",
            )
            axes[0].fill_between(g["layer"], g["ci_low"], g["ci_high"], alpha=0.15, color=line.get_color())
        n_tasks = dec[dec.task != "all"]["task"].nunique()
        axes[0].axhline(1 / max(n_tasks, 1), color="grey", lw=0.8, ls=":", label="chance")
        axes[0].set_xlabel("layer (residual index)")
        axes[0].set_ylabel("task decodability (10-NN, leave-one-out)")
        axes[0].legend()
        a = acc[(acc.metric == "accuracy") & (acc.task != "all")]
        wide = a.pivot_table(index="task", columns="shots", values="value")
        wide.plot.bar(ax=axes[1], rot=30)
        axes[1].set_ylabel("ICL exact-match accuracy")
        axes[1].legend(title="shots")
        fig.suptitle(_title(dec, "Task decodability and ICL accuracy"))
        _save(fig, path)


def plot_aucroc(table: pd.DataFrame, path) -> None:
    """AUCROC_l and R_l per layer: mean over seeds, thin lines per seed."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
        for ax, metric, label in (
            (axes[0], "aucroc", "AUCROC_l (target: model prediction)"),
            (axes[1], "aucroc_cumulative_share", "R_l"),
        ):
            sub = table[table.metric == metric]
            for _, g in sub.groupby("seed"):
                g = g.sort_values("layer")
                ax.plot(g["layer"], g["value"], color="grey", lw=0.6, alpha=0.6)
            mean = sub.groupby("layer")["value"].mean()
            ax.plot(mean.index, mean.values, lw=2, label="mean over seeds")
            ax.set_xlabel("layer")
            ax.set_ylabel(label)
        axes[0].axhline(0.5, color="k", lw=0.8, ls=":")
        axes[0].legend()
        fig.suptitle(_title(table, "Attention to label words predicts the output"))
        _save(fig, path)


def plot_saliency(table: pd.DataFrame, path) -> None:
    """Relative S_wp, S_pq, S_ww per layer, mean over seeds with the per-seed range shaded."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for metric, label in (
            ("s_wp_relative", "S_wp (label ← text)"),
            ("s_pq_relative", "S_pq (query ← label)"),
            ("s_ww_relative", "S_ww (all other)"),
        ):
            sub = table[table.metric == metric].groupby("layer")["value"]
            mean, lo, hi = sub.mean(), sub.min(), sub.max()
            (line,) = ax.plot(mean.index, mean.values, label=label)
            ax.fill_between(mean.index, lo.values, hi.values, alpha=0.15, color=line.get_color())
        ax.set_xlabel("layer")
        ax.set_ylabel("relative saliency")
        ax.legend()
        ax.set_title(_title(table, "Saliency flows"))
        _save(fig, path)


def plot_isolation(table: pd.DataFrame, path) -> None:
    """Label and word loyalty against k, for first / last layer windows and label / random rows."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
        for ax, metric in zip(axes, ("label_loyalty", "word_loyalty"), strict=True):
            sub = table[table.metric == metric]
            for (side, kind), g in sub.groupby(["variant", "arm"]):
                g = g.sort_values("n_layers")
                ax.plot(
                    g["n_layers"],
                    g["value"],
                    marker="o",
                    ls="-" if kind == "label" else ":",
                    label=f"{kind} words, {side} k layers",
                )
            ax.set_xlabel("k (layers isolated)")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_ylim(0, 1.02)
        axes[0].legend()
        fig.suptitle(_title(table, "Isolating label words"))
        _save(fig, path)


ANCHOR_COMPRESSION_ARMS = (
    "full_icl",
    "hidden_anchor",
    "text_anchor",
    "hidden_random",
    "hidden_random_top",
    "zero_shot",
)


def plot_anchor_compression(table: pd.DataFrame, path) -> None:
    """Per arm of anchor-only compression (docs/methods.md §3.7): accuracy, label and word loyalty against
    full ICL (bars = mean over seeds, dots = seeds); tick labels carry tokens per example and the speed-up."""
    wide = table.pivot_table(index=["arm", "seed"], columns="metric", values="value")
    arms = [a for a in ANCHOR_COMPRESSION_ARMS if a in wide.index.get_level_values(0)]
    metrics = [("accuracy", "accuracy"), ("label_loyalty", "label loyalty"), ("word_loyalty", "word loyalty")]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(7.0, 1.5 * len(arms) + 2), 4.2))
        width = 0.8 / len(metrics)
        for i, (metric, label) in enumerate(metrics):
            for j, arm in enumerate(arms):
                v = wide.loc[arm, metric].dropna() if metric in wide else pd.Series(dtype=float)
                x = j + (i - (len(metrics) - 1) / 2) * width
                ax.bar(x, v.mean(), width=width, color=f"C{i}", label=label if j == 0 else None)
                ax.plot(np.full(len(v), x), v, "k.", ms=3)
        names = []
        for arm in arms:
            g = wide.loc[arm]
            name = arm.replace("_", " ")
            if "draw" in g and g["draw"].notna().any():
                name += f"\n(draw {', '.join(str(int(d)) for d in g['draw'].dropna())})"
            name += f"\n{g['tokens'].mean():.0f} tok" if "tokens" in g else ""
            if "speedup_vs_full_icl" in g and g["speedup_vs_full_icl"].notna().any():
                name += f", {g['speedup_vs_full_icl'].mean():.2f}×"
            names.append(name)
        ax.set_xticks(range(len(arms)), names, fontsize=7)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("share of test prompts / mean Jaccard")
        ax.legend(ncol=3, loc="upper right")
        fig.suptitle(_title(table, "Anchor-only context compression (vs full ICL)"))
        _save(fig, path)


def plot_reweighting(table: pd.DataFrame, path) -> None:
    """Accuracy and macro-F1 of vanilla vs re-weighted ICL (bars = mean, dots = seeds), and where the
    learnt β acts: mean |β| per layer; the paired accuracy gain pooled over seeds (interval, p) in the title."""
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
        arms = ["vanilla", "reweighted"]
        for i, metric in enumerate(("accuracy", "macro_f1")):
            for j, arm in enumerate(arms):
                v = table[(table.metric == metric) & (table.arm == arm)]["value"]
                x = i * 3 + j
                left.bar(x, v.mean(), color=f"C{j}", label=arm if i == 0 else None)
                left.plot(np.full(len(v), x), v, "k.", ms=4)
        left.set_xticks([0.5, 3.5], ["accuracy", "macro-F1"])
        left.set_ylim(0, 1)
        left.legend()
        beta = table[table.metric == "beta_abs_mean"]
        for seed, g in beta.groupby("seed"):
            g = g.sort_values("layer")
            right.plot(g["layer"], g["value"], marker=".", label=f"seed {seed}")
        right.set_xlabel("layer")
        right.set_ylabel("mean |β| over heads and demonstrations")
        right.legend()
        title = _title(table, "Anchor re-weighting")
        gain = table[(table.arm == "reweighted-vanilla") & table.seed.isna()].set_index("metric")["value"]
        if {"gain", "gain_lo", "gain_hi", "p_value"} <= set(gain.index):  # the paired gain, pooled over seeds
            title += (
                f"\npaired accuracy gain over vanilla, pooled over seeds: {gain['gain'] * 100:+.1f} points, "
                f"95 % interval [{gain['gain_lo'] * 100:+.1f}, {gain['gain_hi'] * 100:+.1f}], "
                f"p = {gain['p_value']:.2g}"
            )
        fig.suptitle(title)
        _save(fig, path)


def plot_error_diagnosis(table: pd.DataFrame, path) -> None:
    """Predicted confusion (label-word keys) and true confusion (AUC of the model's answers) side by side,
    pooled over seeds; their Pearson / Spearman correlation over class pairs in the title."""
    pooled = table[table.seed.isna()]

    def matrix(metric):
        m = pooled[pooled.metric == metric]
        pairs = m["variant"].str.split("|", n=1, expand=True)
        classes = list(pd.unique(pairs[0]))
        return m.assign(i=pairs[0], j=pairs[1]).pivot(index="i", columns="j", values="value").loc[classes, classes]

    corr = pooled.set_index("metric")["value"]
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, metric, label in (
            (axes[0], "predicted_confusion", "predicted (label-word keys)"),
            (axes[1], "true_confusion", "true (AUC of p_i / (p_i + p_j))"),
        ):
            m = matrix(metric)
            im = ax.imshow(m.to_numpy(), cmap="viridis", vmin=min(0.5, np.nanmin(m.to_numpy())), vmax=1)
            for (i, j), v in np.ndenumerate(m.to_numpy()):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.8 else "k")
            ax.set_xticks(range(len(m)), m.columns, rotation=30, ha="right")
            ax.set_yticks(range(len(m)), m.index)
            ax.set_title(label)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(
            f"{_title(table, f'Error diagnosis, layer {int(table.layer.dropna().iloc[0])}')}\n"
            f"low = confusable; Pearson r = {corr['confusion_pearson']:.2f}, Spearman ρ = "
            f"{corr['confusion_spearman']:.2f} over {int(corr['confusion_pairs'])} class pairs"
        )
        _save(fig, path)


def plot_patching(table: pd.DataFrame, path) -> None:
    """Accuracy per task without a patch and with the own-task (positive) or Null (negative) state."""
    with plt.rc_context(STYLE):
        acc = table[table.metric == "accuracy"].pivot_table(index="task", columns="arm", values="value", sort=False)
        arms = [a for a in ("none", "positive", "negative") if a in acc]
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(acc)), 3.4))
        width = 0.8 / len(arms)
        x = np.arange(len(acc))
        for i, arm in enumerate(arms):
            ax.bar(x + (i - (len(arms) - 1) / 2) * width, acc[arm], width, label=arm, color=f"C{i}")
        ax.set_xticks(x, acc.index, rotation=20)
        ax.set_ylabel("exact-match accuracy")
        ax.set_ylim(0, 1)
        ax.legend()
        first = table.iloc[0]
        fig.suptitle(_title(table, f"Activation patching at layer {first['layer']}, {first['shots']}-shot"))
        _save(fig, path)


def plot_toy_regression(table: pd.DataFrame, path) -> None:
    """Per-basis test MSE over training; MSE by examples seen vs least squares; basis decodability by layer."""
    with plt.rc_context(STYLE):
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 3.6))
        trained = table[table.step.notna()]
        mse = trained[trained.metric == "mse"].pivot_table(index="step", columns="task", values="value")
        for task in mse:
            left.plot(
                mse.index.to_numpy() + 1,
                mse[task],
                marker=".",
                lw=2 if task == "all" else 1,
                color="k" if task == "all" else None,
                label=task,
            )
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xlabel("training step + 1")
        left.set_ylabel("test MSE")
        left.legend()
        last = trained["step"].max()
        by_k = table[(table.metric == "mse_by_examples_seen") & (table.task == "all")]
        for arm, g in by_k.groupby("arm", sort=False):
            g = g[(g.step == last) | g.step.isna()].sort_values("shots")
            model = not arm.startswith("least_squares")
            label = f"model, step {int(last)}" if model else arm.replace("least_squares_", "least squares, ")
            middle.plot(
                g["shots"],
                g["value"],
                marker="." if model else None,
                ls="-" if model else "--",
                label=label.replace("_", " "),
            )
        middle.set_yscale("log")
        middle.set_xlabel("in-context examples seen")
        middle.set_ylabel("MSE of the next y")
        middle.legend()
        dec = trained[trained.metric == "decodability"]
        steps = sorted(dec["step"].unique())
        shown = sorted({steps[round(i)] for i in np.linspace(0, len(steps) - 1, min(5, len(steps)))})
        for step in shown:
            g = dec[dec.step == step].sort_values("layer")
            right.plot(
                g["layer"],
                g["value"],
                marker=".",
                color=plt.cm.viridis(step / max(max(steps), 1)),
                label=f"step {int(step)}",
            )
        n_bases = len([t for t in mse.columns if t != "all"])
        if n_bases:
            right.axhline(1 / n_bases, color="grey", ls=":", lw=1, label="chance")
        right.set_xlabel("layer")
        right.set_ylabel("basis decodability")
        right.set_ylim(0, 1.02)
        right.legend(fontsize=7)
        fig.suptitle("Sparse linear regression, transformer trained from scratch")
        _save(fig, path)


def plot_entropy(table: pd.DataFrame, path) -> None:
    """The four representation measures per layer, token and bigram labels; min/max binning solid,
    quantile-clipped binning dashed."""
    with plt.rc_context(STYLE):
        panels = [
            ("information", "information  H(y) / log B"),
            ("variation", "variation  H(y|x) / log B"),
            ("regularity", "regularity  I(y;x) / log B"),
            ("disentanglement", "disentanglement  JSD (nats)"),
        ]
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), sharex=True)
        for ax, (metric, label) in zip(axes, panels, strict=True):
            for suffix, style in (("", "-"), ("_clipped", "--")):
                sub = table[table.metric == metric + suffix]
                labels = ["token"] if metric == "information" else ["token", "bigram"]
                for colour, variant in zip(("C0", "C1"), labels, strict=False):
                    g = sub[sub.variant == variant].sort_values("layer")
                    if len(g):
                        name = "" if metric == "information" else f"{variant} · "
                        ax.plot(
                            g["layer"],
                            g["value"],
                            ls=style,
                            color=colour,
                            marker=".",
                            ms=3,
                            label=f"{name}{'clipped' if suffix else 'min/max'}",
                        )
            ax.set_xlabel("layer (residual index)")
            ax.set_ylabel(label)
            ax.legend()
        fig.suptitle(_title(table, "Representations as language"))
        _save(fig, path)


def plot_entropy_training(table: pd.DataFrame, path) -> None:
    """Held-out loss and the last layer's measures against training step, one colour per model size."""
    with plt.rc_context(STYLE):
        panels = [
            ("eval_loss", None, "held-out loss"),
            ("information", "token", "information  H(y) / log B"),
            ("regularity", "token", "token regularity  I(y;x) / log B"),
            ("disentanglement", "token", "token disentanglement (nats)"),
            ("variation", "bigram", "bigram variation  H(y|x) / log B"),
        ]
        fig, axes = plt.subplots(1, len(panels), figsize=(18, 3.4), sharex=True)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for colour, (size, g) in zip(colours, table.groupby("size", sort=False), strict=False):
            last = g["layer"].max()
            params = int(g["n_params"].iloc[0])
            for ax, (metric, variant, _) in zip(axes, panels, strict=True):
                sel = g[g.metric == metric]
                if variant:
                    sel = sel[(sel.variant == variant) & (sel.range == "minmax") & (sel.layer == last)]
                sel = sel.sort_values("step")
                ax.plot(
                    sel["step"].clip(lower=0.5),
                    sel["value"],
                    marker=".",
                    ms=3,
                    color=colour,
                    label=f"{size} ({params / 1e3:.0f}k params)",
                )
        for ax, (_, _, label) in zip(axes, panels, strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("training step (0 plotted at 0.5)")
            ax.set_ylabel(label)
        axes[0].legend()
        fig.suptitle("Representations as language over training — toy GPT-2s, last layer, min/max binning")
        _save(fig, path)


ATLAS_PANELS = [
    ("where the task is encoded", ["decodability", "task-space decoding", "task-space energy"]),
    ("where label words aggregate it", ["S_wp", "S_pq", "isolation loyalty (first k)", "isolation loyalty (last k)"]),
    ("where the prediction reads it out", ["AUCROC_l"]),
    ("how compressed the representation is", ["information", "regularity"]),
]


def plot_layer_atlas(curves: pd.DataFrame, peaks: pd.DataFrame, path, title: str) -> None:
    """Every layer-wise curve on one relative-depth axis, peaks starred, one panel per question.

    `curves` / `peaks` may hold several datasets (a `dataset` column, `model_atlas`): one line style
    per dataset, the dataset named in the legend. Only panels that have curves are drawn (a
    generation dataset alone has decodability only: one panel, not three empty ones)."""
    if "dataset" not in curves:
        curves, peaks = curves.assign(dataset=""), peaks.assign(dataset="")
    datasets = list(dict.fromkeys(curves["dataset"]))
    styles = dict(zip(datasets, ["-", "--", "-.", ":"] * len(datasets), strict=False))
    panels = [(panel, [n for n in names if (curves.curve == n).any()]) for panel, names in ATLAS_PANELS]
    panels = [(panel, names) for panel, names in panels if names]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, max(len(panels), 1), figsize=(4.4 * max(len(panels), 1) + 0.8, 3.6), sharex=True, squeeze=False
        )
        for ax, (panel, names) in zip(axes[0], panels, strict=False):
            for colour, name in enumerate(names):
                for dataset, g in curves[curves.curve == name].groupby("dataset", sort=False):
                    g = g.sort_values("depth")
                    label = f"{name} · {dataset}" if len(datasets) > 1 else name
                    (line,) = ax.plot(
                        g["depth"],
                        g["value"],
                        ls=styles[dataset],
                        color=f"C{colour}",
                        marker="." if name.startswith("isolation") else None,
                        label=label,
                    )
                    peak = peaks[(peaks.curve == name) & (peaks.dataset == dataset)].iloc[0]
                    if np.isfinite(peak["depth"]):
                        ax.plot([peak["depth"]], [peak["value"]], marker="*", ms=11, color=line.get_color())
                        ax.axvline(peak["depth"], color=line.get_color(), lw=0.7, ls=":")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)  # below the x label: never over a curve
            ax.set_title(panel)
            ax.set_xlabel("relative depth (layer / L)")
            ax.set_xlim(0, 1)
        if not panels:
            axes[0, 0].text(
                0.5,
                0.5,
                "no layer-wise table for this model",
                ha="center",
                va="center",
                transform=axes[0, 0].transAxes,
                color="grey",
            )
        fig.suptitle(title + "  (★ = peak; isolation: lowest loyalty; information: lowest)")
        _save(fig, path)


def plot_layer_curves(table: pd.DataFrame, path) -> None:
    """Any layer-wise table (rows layer, metric, value; a family's figure with plot="layer_curves",
    iclscope.core.families): one panel per metric, the mean over the other rows per layer, thin
    lines per seed where the table has seeds."""
    metrics = list(dict.fromkeys(table["metric"]))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics) + 0.6, 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            sub = table[table.metric == metric]
            if "seed" in sub and sub["seed"].nunique() > 1:
                for _, g in sub.groupby("seed"):
                    per_layer = g.groupby("layer")["value"].mean()
                    ax.plot(per_layer.index, per_layer.values, color="grey", lw=0.6, alpha=0.6)
            mean = sub.groupby("layer")["value"].mean()
            ax.plot(mean.index, mean.values, lw=2)
            ax.set_xlabel("layer")
            ax.set_ylabel(metric)
        fig.suptitle(_title(table, ", ".join(metrics)))
        _save(fig, path)


# ---------------------------------------------------------------------------- one entry point
def draw(figure: str, inputs: dict, path) -> None:
    """Figure `figure` (a figure of iclscope.core.families, or its `plot`) from its input files, by name: "table"
    for the figures of one metric table, the named inputs of the others."""
    from iclscope.core.tables import read_table

    if figure == "tsft":
        from iclscope.core.runs import read_runs

        plot_tsft(read_runs(inputs["runs"]), read_table(inputs["summary"]), path)
    elif figure == "decodability":
        plot_decodability(read_table(inputs["decodability"]), read_table(inputs["accuracy"]), path)
    elif callable(globals().get(f"plot_{figure}")) and set(inputs) == {"table"}:
        globals()[f"plot_{figure}"](read_table(inputs["table"]), path)
    else:
        raise ValueError(f"no figure {figure!r} with inputs {sorted(inputs)} (workflow/rules/figures.smk)")
