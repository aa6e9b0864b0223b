"""The layer atlas and the headline summary from metric tables alone."""

import numpy as np
import pandas as pd

from iclscope.core.metrics import metric_frame
from iclscope.core.tables import write_table
from iclscope.report.atlas import atlas_curves, headline, model_atlas, peak_layers, read_tables
from iclscope.report.plots import plot_layer_atlas

L = 10


def tables() -> dict[str, pd.DataFrame]:
    layers = np.arange(L + 1)
    common = {"model": "m", "dataset": "d"}
    dec = metric_frame(
        [
            {
                "metric": "decodability_euclidean",
                "task": "all",
                "shots": s,
                "layer": int(i),
                "value": float(np.exp(-((i - 6) ** 2) / 4) * s / 4),
            }
            for s in (1, 4)
            for i in layers
        ],
        **common,
    )
    sal = metric_frame(
        [
            {"metric": m, "seed": seed, "layer": i + 1, "value": v}
            for seed in (1, 2)
            for i in range(L)
            for m, v in (("s_wp_relative", 1 - i / L), ("s_pq_relative", i / L))
        ],
        **common,
    )
    iso = metric_frame(
        [
            {
                "metric": "label_loyalty",
                "variant": side,
                "arm": kind,
                "n_layers": k,
                "value": (0.3 if side == "first" else 0.95) if kind == "label" else 0.9,
            }
            for side in ("first", "last")
            for kind in ("label", "random")
            for k in (1, 3)
        ],
        **common,
    )
    return {"decodability": dec, "saliency": sal, "isolation": iso}


def test_curves_and_peaks_on_a_relative_depth_axis():
    curves = atlas_curves(tables(), L)
    assert set(curves["curve"]) == {
        "decodability",
        "S_wp",
        "S_pq",
        "isolation loyalty (first k)",
        "isolation loyalty (last k)",
    }
    assert curves["depth"].between(0, 1).all()
    peaks = peak_layers(curves).set_index("curve")
    assert peaks.loc["decodability", "layer"] == 6 and peaks.loc["decodability", "value"] == 1.0  # 4 shots
    assert peaks.loc["S_wp", "layer"] == 1 and peaks.loc["S_pq", "layer"] == L
    first = peaks.loc["isolation loyalty (first k)"]
    assert first["peak"] == "min" and first["value"] == 0.3
    assert list(curves[curves.curve == "isolation loyalty (last k)"]["layer"]) == [10, 9]  # window middles


def test_atlas_degrades_when_families_are_missing(tmp_path):
    empty = atlas_curves({}, L)
    assert empty.empty and peak_layers(empty).empty
    only = tables()
    only.pop("saliency")
    only.pop("isolation")
    curves = atlas_curves(only, L)
    plot_layer_atlas(curves, peak_layers(curves), tmp_path / "atlas.png", "test")
    assert (tmp_path / "atlas.png").stat().st_size > 10_000


def test_a_curve_without_finite_values_has_no_peak_and_still_draws(tmp_path):
    """AUCROC is NaN at every layer when a (tiny) model predicts one class only."""
    t = tables()
    t["aucroc"] = metric_frame(
        [{"metric": "aucroc", "seed": 1, "layer": i + 1, "value": float("nan")} for i in range(L)],
        model="m",
        dataset="d",
    )
    curves = atlas_curves(t, L)
    peaks = peak_layers(curves).set_index("curve")
    nan_curves = ["AUCROC_l"]
    assert peaks.loc[nan_curves, "layer"].isna().all()
    assert peaks.drop(nan_curves)["layer"].notna().all()
    plot_layer_atlas(curves, peak_layers(curves), tmp_path / "atlas.png", "test")
    assert (tmp_path / "atlas.png").stat().st_size > 10_000


def test_tables_are_read_from_the_given_paths_and_headline_fills_what_exists(tmp_path):
    directory = tmp_path / "m" / "d"
    for name, table in tables().items():
        write_table(table, directory / f"{name}.parquet")
    acc = metric_frame(
        [{"metric": "accuracy", "task": "all", "seed": s, "value": v} for s, v in ((1, 0.5), (2, 0.7))],
        model="m",
        dataset="d",
    )
    write_table(acc, directory / "icl_accuracy.parquet")
    given = sorted(directory.glob("*.parquet"))
    write_table(tables()["saliency"], directory / "aucroc.parquet")  # in the directory, not given: never read
    read = read_tables(given)
    assert list(read) == ["d"] and set(read["d"]) == {"decodability", "saliency", "isolation"}
    h = headline(given, "m", "d")
    assert h["icl_accuracy"] == 0.6 and h["peak_decodability_layer"] == 6
    assert np.isnan(h["icicl_speedup"]) and np.isnan(h["tsft_gain"])


def test_one_atlas_per_model_holds_every_datasets_curves(tmp_path):
    """A classification dataset's saliency and a generation dataset's decodability share one figure:
    each curve keeps its dataset, its own peak, and no panel is empty."""
    both = {"cls": {"saliency": tables()["saliency"]}, "gen": {"decodability": tables()["decodability"]}}
    curves = model_atlas(both, L)
    assert set(map(tuple, curves[["dataset", "curve"]].drop_duplicates().to_numpy())) == {
        ("cls", "S_wp"),
        ("cls", "S_pq"),
        ("gen", "decodability"),
    }
    peaks = peak_layers(curves).set_index(["dataset", "curve"])
    assert peaks.loc[("gen", "decodability"), "layer"] == 6 and peaks.loc[("cls", "S_pq"), "layer"] == L
    plot_layer_atlas(curves, peak_layers(curves), tmp_path / "atlas.png", "test")
    assert (tmp_path / "atlas.png").stat().st_size > 10_000
    assert model_atlas({}, L).empty and model_atlas({"d": {}}, L).empty
