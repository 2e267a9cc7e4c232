"""Chapter 7's explorer: results loading, statistics, the paper's claims judged on hand-made numbers, plots, widget."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from cutlib import grid as G
from cutlib import results as Wd

VARIANTS = ["CUT", "FastCUT", "no_id", "last_layer", "external", "internal+external"]


def make_results(root, fid, size_w1=None, seeds=(0, 1)):
    """A grid folder from hand-written eval.json/metrics.jsonl/samples: fid[variant] = values per seed."""
    for v, values in fid.items():
        for seed, value in zip(seeds, values):
            folder = root / v / f"seed{seed}"
            folder.mkdir(parents=True)
            metrics = {"fid": value, "animal_fraction": 0.3, "animal_fraction_A": 0.2, "animal_fraction_B": 0.4,
                       "size_w1_A": (size_w1 or {}).get(v, [0.1, 0.1])[seed]}
            info = {"fid": {"better": "lower"}, "size_w1_A": {"better": None}}
            (folder / "eval.json").write_text(json.dumps({"run_seed": seed, "final": {"metrics": metrics}, "metric_info": info}))
            rows = [{"step": s, "G_GAN": value + s, "D": 0.1} for s in range(1, 11)]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            Image.new("RGB", (20, 40), (seed * 100, 0, 0)).save(folder / "samples.jpg")
    G.collect(root, variants=list(fid))
    return Wd.load_results(root)


@pytest.fixture
def agreeing(tmp_path):
    fid = {"CUT": [10, 11], "FastCUT": [20, 21], "no_id": [5, 30], "last_layer": [30, 31], "external": [40, 42],
           "internal+external": [35, 36]}
    return make_results(tmp_path, fid, size_w1={"CUT": [0.3, 0.32], "FastCUT": [0.05, 0.06]})


def test_load_results_reads_runs_curves_and_samples(agreeing):
    assert Wd.variants_of(agreeing) == VARIANTS
    assert "fid" in Wd.metric_names(agreeing)
    run = agreeing["runs"]["no_id"][1]
    assert run["curves"]["G_GAN"][0] == 30 + 1 and run["sample"].name == "samples.jpg"
    with pytest.raises(FileNotFoundError, match="results.json"):
        Wd.load_results(agreeing["dir"] + "/nothing")


def test_metric_stats_and_curves(agreeing):
    names, means, stds = Wd.metric_stats(agreeing, "fid", ["CUT", "no_id"])
    assert names == ["CUT", "no_id"]
    np.testing.assert_allclose(means, [10.5, 17.5])
    np.testing.assert_allclose(stds, [np.std([10, 11], ddof=1), np.std([5, 30], ddof=1)])
    steps, values = Wd.loss_curves(agreeing, "external", "G_GAN")[1]
    np.testing.assert_array_equal(values - steps, [42.0] * 10)
    with pytest.raises(KeyError, match="nonexistent"):
        Wd.metric_stats(agreeing, "fid", ["nonexistent"])


def test_compare_verdicts(agreeing, tmp_path):
    assert Wd.compare(agreeing, "CUT", "external", "fid")["verdict"] == "yes"  # 10.5 +- 0.7 vs 41 +- 1.4, lower wins
    assert Wd.compare(agreeing, "external", "CUT", "fid")["verdict"] == "no"
    assert Wd.compare(agreeing, "CUT", "no_id", "fid")["verdict"] == "inconclusive"  # no_id's spread covers CUT
    assert Wd.compare(agreeing, "external", "CUT", "fid", better="higher")["verdict"] == "yes"
    one = make_results(tmp_path / "one", {"CUT": [1], "external": [9]}, seeds=(0,))
    assert Wd.compare(one, "CUT", "external", "fid")["verdict"] == "inconclusive"  # one seed: no spread to judge


def test_followup_verdicts_compare_each_method_with_cut_on_its_own_benchmark(tmp_path):
    fid = {"CUT-stripes": [10, 11], "MoNCE-stripes": [5, 6], "DCLGAN-stripes": [30, 31], "QS-Attn-stripes": [9, 12],
           "CUT-city": [20, 21], "MoNCE-city": [20, 22]}
    results = make_results(tmp_path, fid)
    rows = Wd.followup_verdicts(results, {"stripes": ["fid"], "city": ["fid"]})
    got = {(r["method"], r["benchmark"]): r["verdict"] for r in rows}
    assert got == {("MoNCE", "stripes"): "better", ("DCLGAN", "stripes"): "worse",  # lower FID is better
                   ("QS-Attn", "stripes"): "no difference at this scale", ("MoNCE", "city"): "no difference at this scale"}
    assert all(r["metric"] == "fid" and "mean ± std over 2 seeds" in r["evidence"] for r in rows)
    with pytest.raises(KeyError, match="CUT-horses"):
        Wd.followup_verdicts(results, {"horses": ["fid"]})


def test_load_results_reads_the_best_epoch_table_when_asked(agreeing):
    G.collect(agreeing["dir"], which="final")
    with pytest.raises(FileNotFoundError, match="results_best.json"):
        Wd.load_results(agreeing["dir"], which="best")
    with pytest.raises(ValueError, match="which"):
        Wd.load_results(agreeing["dir"], which="last")


def test_paper_claims_on_agreeing_and_disagreeing_numbers(agreeing, tmp_path):
    claims = Wd.paper_claims(agreeing)
    assert [c["verdict"] for c in claims] == ["yes", "yes", "yes", "yes"]
    assert "10.5 ± 0.71" in claims[0]["evidence"] and "CUT 0.71" in claims[2]["evidence"]
    assert all(c["says"] == "our runs agree" for c in claims)
    fid = {"CUT": [40, 41], "FastCUT": [20, 21], "no_id": [40, 41], "last_layer": [10, 11], "external": [10, 12],
           "internal+external": [30, 45]}
    other = Wd.paper_claims(make_results(tmp_path / "b", fid, size_w1={"CUT": [0.1, 0.11], "FastCUT": [0.1, 0.12]}))
    assert [c["verdict"] for c in other] == ["inconclusive", "no", "inconclusive", "inconclusive"]
    partial = Wd.paper_claims(make_results(tmp_path / "c", {"CUT": [1, 2], "last_layer": [5, 6]}))
    assert [c["verdict"] for c in partial] == ["missing", "yes", "missing", "missing"]
    assert "external" in partial[0]["evidence"]


def test_plots_draw_one_bar_per_variant_and_one_line_per_seed(agreeing):
    ax = Wd.plot_metric_bars(agreeing, "fid", ["CUT", "external", "no_id"])
    assert len(ax.patches) == 3
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [10.5, 41, 17.5])
    ax = Wd.plot_loss_curves(agreeing, "G_GAN", ["CUT", "FastCUT"], smooth=3)
    assert len(ax.lines) == 4 and len(ax.lines[0].get_xdata()) == 8
    fig = Wd.plot_samples(agreeing, ["CUT", "FastCUT"], seed=1)
    assert [a.get_title() for a in fig.axes] == ["CUT", "FastCUT"] and fig.axes[0].images[0].get_array()[0, 0, 0] == 100
    fig, samples = Wd.overview(agreeing)
    assert len(fig.axes) == 2  # fid bars + losses (the other default metrics are not in this table)
    plt.close("all")


def test_explorer_builds_and_redraws(agreeing):
    box = Wd.ablation_explorer(agreeing["dir"])
    pick, right = box.children[0].children
    metric, loss = right.children
    assert list(pick.options) == VARIANTS and metric.value == "fid" and loss.value == "G_GAN"
    pick.value = ("CUT", "external")  # redraws through the observer without error
    metric.value = "size_w1_A"
    assert list(pick.value) == ["CUT", "external"]
    plt.close("all")
