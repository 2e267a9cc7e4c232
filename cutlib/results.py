"""Exploring an ablation grid's results (chapter 7): data helpers, plots, the paper's claims checked
against our numbers (book/reference.md section 10), and an ipywidgets explorer over them.

A results folder is what ``cutlib.grid.ship`` (or the grid itself) writes: ``results.json`` and, per run,
``<variant>/seed<k>/`` with ``eval.json``, ``metrics.jsonl`` and a sample grid (``samples.jpg`` when
shipped, ``samples/latest.png`` in a live run folder).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from cutlib.viz import read_metrics


def load_results(results_dir: str | Path, which: str = "final") -> dict:
    """results.json (``which="best"``: results_best.json, each run's best epoch) of a grid plus, per variant
    and seed, its training metrics and sample image path."""
    if which not in ("final", "best"):
        raise ValueError(f"which must be 'final' or 'best', got {which!r}")
    results_dir = Path(results_dir)
    path = results_dir / ("results.json" if which == "final" else "results_best.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a grid output folder (python -m cutlib grid CONFIG, "
                                "which collects both; or --collect-only) or notebooks/results/ablations_cpu")
    table = json.loads(path.read_text())
    runs = {}
    for variant in table["variants"]:
        for folder in sorted((results_dir / variant).glob("seed*"), key=lambda p: int(p.name[4:])):
            sample = next((p for p in (folder / "samples.jpg", folder / "samples" / "latest.png") if p.is_file()), None)
            curves = read_metrics(folder / "metrics.jsonl") if (folder / "metrics.jsonl").is_file() else None
            runs.setdefault(variant, {})[int(folder.name[4:])] = {"curves": curves, "sample": sample}
    return {"dir": str(results_dir), "table": table, "runs": runs}


def variants_of(results: dict) -> list[str]:
    return list(results["table"]["variants"])


def metric_names(results: dict) -> list[str]:
    """Metrics every variant has, in eval.json's order."""
    rows = list(results["table"]["variants"].values())
    return [m for m in rows[0]["metrics"] if all(m in r["metrics"] for r in rows)] if rows else []


def metric_stats(results: dict, metric: str, variants: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(variants, means, stds) of one metric; the std over seeds is 0 where a variant has one seed."""
    variants = variants or variants_of(results)
    rows = results["table"]["variants"]
    missing = [v for v in variants if v not in rows or metric not in rows[v]["metrics"]]
    if missing:
        raise KeyError(f"no {metric!r} for variant(s) {missing}; variants: {variants_of(results)}, metrics: {metric_names(results)}")
    stats = [rows[v]["metrics"][metric] for v in variants]
    return variants, np.array([s["mean"] for s in stats]), np.array([s["std"] or 0.0 for s in stats])


def loss_curves(results: dict, variant: str, key: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """seed -> (steps, values) of one training loss of a variant (seeds without that loss are left out)."""
    out = {}
    for seed, run in results["runs"].get(variant, {}).items():
        curves = run["curves"]
        if curves and key in curves:
            out[seed] = (np.asarray(curves["step"]), np.asarray(curves[key], dtype=float))
    return out


def compare(results: dict, a: str, b: str, metric: str, better: str | None = None) -> dict:
    """Is ``a`` better than ``b`` on ``metric`` (``better``: "lower"/"higher", default from eval.json)? "yes"/"no"
    when the mean +- std intervals over seeds are apart, "inconclusive" when they overlap (or n < 2)."""
    (_, means, stds) = metric_stats(results, metric, [a, b])
    better = better or results["table"].get("metric_info", {}).get(metric, {}).get("better") or "lower"
    n = min(results["table"]["variants"][v]["n"] for v in (a, b))
    apart = abs(means[0] - means[1]) > stds[0] + stds[1]
    a_wins = means[0] < means[1] if better == "lower" else means[0] > means[1]
    verdict = "inconclusive" if (n < 2 or not apart) else ("yes" if a_wins else "no")
    return {"a": a, "b": b, "metric": metric, "better": better, "mean": (float(means[0]), float(means[1])),
            "std": (float(stds[0]), float(stds[1])), "n": n, "verdict": verdict}


def _evidence(c: dict) -> str:
    return (f"{c['metric']} ({c['better']} is better): {c['a']} {c['mean'][0]:.3g} ± {c['std'][0]:.2g} vs "
            f"{c['b']} {c['mean'][1]:.3g} ± {c['std'][1]:.2g} (mean ± std over {c['n']} seeds)")


VERDICT = {"yes": "our runs agree", "no": "our runs disagree", "inconclusive": "inconclusive (spreads overlap)",
           "missing": "not in these results"}


def _claim_beats(results, metric, pairs):
    """Several (a, b) comparisons on one metric: their common verdict, else "inconclusive"."""
    found = [compare(results, a, b, metric) for a, b in pairs]
    verdicts = {c["verdict"] for c in found}
    return (verdicts.pop() if len(verdicts) == 1 else "inconclusive"), "; ".join(map(_evidence, found))


def _claim_stability(results, metric):
    """Fig. 6: the spread over seeds (a collapse shows as one bad seed), CUT vs no identity; a factor 2 decides."""
    (_, means, stds) = metric_stats(results, metric, ["CUT", "no_id"])
    n = min(results["table"]["variants"][v]["n"] for v in ("CUT", "no_id"))
    ratio = stds[1] / max(stds[0], 1e-12)
    verdict = "inconclusive" if n < 2 or 0.5 < ratio < 2 else ("yes" if ratio >= 2 else "no")
    return verdict, (f"{metric} std over {n} seeds: CUT {stds[0]:.2g} (mean {means[0]:.3g}) vs no_id {stds[1]:.2g} "
                     f"(mean {means[1]:.3g}); ratio {ratio:.2g} (>= 2 counts as agreement, <= 0.5 as disagreement)")


def _claim_size(results, metric):
    """Fig. 15: size_w1_A, the distance of the outputs' animal sizes to the inputs' (larger = changed more)."""
    c = compare(results, "CUT", "FastCUT", "size_w1_A", better="higher")
    fr = {v: metric_stats(results, "animal_fraction", [v])[1][0] for v in ("CUT", "FastCUT")}
    row = results["table"]["variants"]["CUT"]["metrics"]
    return c["verdict"], (_evidence(c).replace("(higher is better)", "(distance of output sizes to input sizes, larger = changed more)")
                          + f"; animal fraction: inputs {row['animal_fraction_A']['mean']:.2f}, domain B "
                            f"{row['animal_fraction_B']['mean']:.2f}, CUT {fr['CUT']:.2f}, FastCUT {fr['FastCUT']:.2f}")


CLAIMS = [  # (the paper's claim, variants it needs, how it is judged)
    ("internal negatives beat external ones (Fig. 4)", ("CUT", "external", "internal+external"),
     lambda r, m: _claim_beats(r, m, [("CUT", "external"), ("CUT", "internal+external")])),
    ("several layers beat the last layer only (Fig. 4)", ("CUT", "last_layer"),
     lambda r, m: _claim_beats(r, m, [("CUT", "last_layer")])),
    ("the identity term stabilises training (Fig. 6): smaller spread over seeds with it", ("CUT", "no_id"), _claim_stability),
    ("CUT changes object size more than FastCUT (Fig. 15)", ("CUT", "FastCUT"), _claim_size),
]


def paper_claims(results: dict, metric: str = "fid") -> list[dict]:
    """The paper's four ablation claims, each judged on the grid's numbers: claim, verdict, says, evidence.
    A claim whose variants are not in the results gets the verdict "missing"."""
    claims = []
    for claim, needed, judge in CLAIMS:
        absent = sorted(set(needed) - set(variants_of(results)))
        verdict, evidence = ("missing", f"needs variant(s) {absent}") if absent else judge(results, metric)
        claims.append({"claim": claim, "verdict": verdict, "says": VERDICT[verdict], "evidence": evidence})
    return claims


FOLLOWUP_SAYS = {"yes": "better", "no": "worse", "inconclusive": "no difference at this scale"}


def followup_verdicts(results: dict, metrics: dict[str, list[str]], baseline: str = "CUT") -> list[dict]:
    """Each follow-up against ``baseline`` on the same benchmark (chapter 11): variants are named METHOD-BENCHMARK
    (e.g. "MoNCE-city" vs "CUT-city"); ``metrics`` maps a benchmark to the metrics judged on it. Per row:
    method, benchmark, metric, verdict ("better" / "worse" when the mean ± std intervals over seeds are apart,
    else "no difference at this scale"), evidence."""
    names = variants_of(results)
    rows = []
    for benchmark, judged in metrics.items():
        base = f"{baseline}-{benchmark}"
        if base not in names:
            raise KeyError(f"no variant {base!r} to compare with; variants: {names}")
        for variant in (v for v in names if v.endswith(f"-{benchmark}") and v != base):
            for metric in judged:
                c = compare(results, variant, base, metric)
                rows.append({"method": variant.removesuffix(f"-{benchmark}"), "benchmark": benchmark, "metric": metric,
                             "verdict": FOLLOWUP_SAYS[c["verdict"]], "evidence": _evidence(c)})
    return rows


# ------------------------------------------------------------------ plots
def plot_metric_bars(results: dict, metric: str, variants: list[str] | None = None, ax=None):
    """One bar per variant: mean over seeds, error bar one std, seeds as dots."""
    import matplotlib.pyplot as plt

    names, means, stds = metric_stats(results, metric, variants)
    ax = ax or plt.subplots(figsize=(max(4, 0.6 * len(names) + 1), 3))[1]
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, capsize=3, color="tab:blue", alpha=0.6)
    for i, v in enumerate(names):
        values = results["table"]["variants"][v]["metrics"][metric]["values"]
        ax.plot([i] * len(values), values, "k.", ms=4)
    better = results["table"].get("metric_info", {}).get(metric, {}).get("better")
    ax.set_title(metric + (f" ({better} is better)" if better else ""), fontsize="medium")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return ax


def plot_loss_curves(results: dict, key: str, variants: list[str] | None = None, ax=None, smooth: int = 5):
    """A training loss against the step, one colour per variant, one line per seed."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3))[1]
    for i, v in enumerate(variants or variants_of(results)):
        for j, (steps, values) in enumerate(loss_curves(results, v, key).values()):
            if smooth > 1 and len(values) >= smooth:
                values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
                steps = steps[smooth - 1:]
            ax.plot(steps, values, color=f"C{i % 10}", alpha=0.8, label=v if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend(fontsize="x-small")
    ax.grid(alpha=0.3)
    return ax


def plot_samples(results: dict, variants: list[str] | None = None, seed: int | None = None):
    """The last sample grid (test inputs | translations) of each variant's run with ``seed`` (first seed)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    variants = variants or variants_of(results)
    fig, axes = plt.subplots(1, len(variants), figsize=(1.3 * len(variants), 2.8), squeeze=False)
    for ax, v in zip(axes[0], variants):
        runs = results["runs"].get(v, {})
        run = runs.get(seed) if seed is not None else next(iter(runs.values()), None)
        if run and run["sample"]:
            ax.imshow(Image.open(run["sample"]))
        ax.set_title(v, fontsize="x-small")
        ax.axis("off")
    return fig


def overview(results: dict, variants: list[str] | None = None, metrics=("fid", "stripe_score", "preservation_iou"),
             loss: str = "G_GAN"):
    """The explorer's plots drawn once (static fallback): metric bars, a loss curve, samples."""
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if m in metric_names(results)]
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4 * (len(metrics) + 1), 3.4))
    for ax, m in zip(axes, metrics):
        plot_metric_bars(results, m, variants, ax=ax)
    plot_loss_curves(results, loss, variants, ax=axes[-1])
    fig.tight_layout()
    return fig, plot_samples(results, variants)


def figure_output(fig, dpi: int = 100) -> dict:
    """A matplotlib figure as one notebook output (a display_data with its PNG), as the inline backend shows it."""
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"expected a matplotlib Figure, got {type(fig).__name__}; pass what plt.subplots returned")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": repr(fig)}}


def show_in(output, *figures) -> tuple[dict, ...]:
    """Make an ipywidgets ``Output`` show ``figures`` (replacing what it showed) and close them.

    The outputs are set from the kernel (the widget's ``outputs`` state) instead of captured with
    ``with output:``. Captured output needs a frontend to collect it; run without one (papermill,
    nbval, the book) nbclient imitates it and answers every captured output on the kernel's shell
    socket while it waits on that socket for the cell's reply, which can then go unnoticed until the
    cell timeout. Setting the state needs no answer from anyone, so a headless run never waits."""
    import matplotlib.pyplot as plt
    from ipywidgets import Output

    if not isinstance(output, Output):
        raise TypeError(f"expected an ipywidgets.Output to show the figures in, got {type(output).__name__}")
    outputs = tuple(figure_output(fig) for fig in figures)
    for fig in figures:
        plt.close(fig)  # else the inline backend shows it again below the cell
    output.outputs = outputs
    return outputs


def explorer_figures(results: dict, variants: list[str], metric: str, loss: str):
    """What the explorer shows for one choice: (bars of metric | curves of loss) and the samples figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    plot_metric_bars(results, metric, variants, ax=axes[0])
    plot_loss_curves(results, loss, variants, ax=axes[1])
    fig.tight_layout()
    return fig, plot_samples(results, variants)


def loss_names(results: dict) -> list[str]:
    """The training losses logged by the runs (metrics.jsonl keys other than step, epoch, lr and time)."""
    keys = {k for runs in results["runs"].values() for r in runs.values() if r["curves"] for k in r["curves"]}
    return sorted(keys - {"step", "epoch", "lr", "time"})


def ablation_explorer(results_dir: str | Path):
    """An ipywidgets explorer: choose variants, a metric and a training loss; see bars with spread,
    curves and samples. Returns the widget (display it in a notebook). The plots are set as the
    Output's content (``show_in``), so a run without a frontend does not wait on them."""
    import ipywidgets as W

    results = load_results(results_dir)
    names = variants_of(results)
    pick = W.SelectMultiple(options=names, value=tuple(names[:4]), rows=min(10, len(names)), description="variants")
    metric = W.Dropdown(options=metric_names(results), value="fid" if "fid" in metric_names(results) else None, description="metric")
    losses = loss_names(results)
    loss = W.Dropdown(options=losses, value="G_GAN" if "G_GAN" in losses else losses[0], description="loss")
    out = W.Output()

    def draw(*_):
        show_in(out, *explorer_figures(results, list(pick.value) or names[:1], metric.value, loss.value))

    for w in (pick, metric, loss):
        w.observe(draw, names="value")
    draw()
    return W.VBox([W.HBox([pick, W.VBox([metric, loss])]), out])
