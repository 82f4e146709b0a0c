"""Experiment figures and tables: built from real (quick) results, labelled, honest about bands."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from guiding_nc.experiments import paper, results
from guiding_nc.experiments.results import load_results
from guiding_nc.experiments.runner import run_experiment
from guiding_nc.experiments.spec import load_experiment
from guiding_nc.core.metric_formulas import cross_entropy_lower_bound
from guiding_nc.companions.plotting import experiments as plots

SPEC = """
configs: [ufm10]
seeds: [0, 1]
overrides: {num_samples: 40, feature_dim: 16, batch_size: 40, epochs: 8, eval_every: 2, device: cpu}
record_step_accuracy: true
save_margins: true
"""


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    (tmp / "q.yaml").write_text(SPEC)
    run_experiment(load_experiment(tmp / "q.yaml"), out=tmp / "out", work_dir=tmp / "work",
                      progress=False, num_threads=1)
    return load_results(tmp / "out")


def _labelled(fig):
    axes = [a for a in fig.axes if a.get_visible()]
    assert axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()


def test_seed_bands_keep_only_steps_every_seed_reached():
    rows = [{"config": "c", "variant": "v", "method": "m", "seed": s, "step": t, "y": float(s + t)}
            for s in (0, 1) for t in ((1, 2, 3) if s == 0 else (1, 2))]
    ((key, (xs, med, lo, hi)),) = results.seed_bands(rows, "y").items()
    assert key == ("c", "v", "m") and list(xs) == [1, 2]
    assert np.allclose(med, [1.5, 2.5]) and np.allclose(lo, [1, 2]) and np.allclose(hi, [2, 3])


def test_ufm_dynamics_figure(quick):
    fig = plots.plot_ufm_dynamics(quick, num_classes=10, loss_bound=cross_entropy_lower_bound(10, 5.0))
    assert isinstance(fig, Figure)
    _labelled(fig)
    loss_ax = fig.axes[0]
    # three methods (the float32 resolution of the loss is drawn only where the curves come near it)
    assert [ln.get_label() for ln in loss_ax.get_lines()] == ["standard", "fixed ETF", "implicit ETF"]
    assert "above its lower bound" in loss_ax.get_title() and loss_ax.get_yscale() == "log"
    # the fixed and implicit ETF's curves nearly coincide: a panel divides one by the other
    ratio_ax = fig.axes[6]
    assert "÷" in ratio_ax.get_title() and len(ratio_ax.get_lines()) == 5  # four ratios + the line at 1


def test_step_accuracy_figure(quick):
    fig = plots.plot_step_accuracy(quick["step_accuracy"], configs=["ufm10"], titles={"ufm10": "UFM"})
    _labelled(fig)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert all("(2 seeds)" in lab for lab in labels) and len(labels) == 3


def test_variant_and_accuracy_figures(quick):
    _labelled(plots.plot_variant_curves(quick, config="ufm10", variants=["default"], y="train_loss",
                                        ylabel="loss", log=True))
    res = dict(quick)
    res["curves"] = [dict(c, test_top1=c["train_top1"]) for c in quick["curves"]]
    _labelled(plots.plot_accuracy_curves(res, configs=["ufm10"]))


def test_delta_and_cost_figures_and_tables():
    summary = {f"u/{v}/implicit": {"train_loss": {"median": x, "min": x / 2, "max": 2 * x}}
               for v, x in (("a", 0.1), ("b", 0.2))}
    _labelled(plots.plot_delta_sensitivity(summary, configs=["u"], deltas={"a": 1e-3, "b": 1e-1},
                                           metrics=[("train_loss", "loss", True)]))
    rows = [{"config": "ufm10", "variant": "standard", "time_step_ms": 3.0, "time_backbone_ms": 2.0,
             "time_etf_forward_ms": 0.0, "time_ddn_backward_ms": 0.0, "peak_extra_gb": 0.01},
            {"config": "ufm10", "variant": "implicit, DDN dense KKT", "kkt_need_gb": 70.0, "status": "skipped: big"}]
    _labelled(plots.plot_cost(rows, configs=["ufm10"]))
    md = plots.cost_table_markdown(rows)
    # memory in GiB throughout; a case not run says what it would need, and in which precision
    assert "not run: needs 70.0 GiB (float32)" in md.replace("\u00a0", " ") and "| 3.00 |" in md


def test_tables(quick):
    md = plots.summary_table_markdown(quick["summary"], configs=["ufm10"], key_at=["train_top1"])
    assert md.splitlines()[0].startswith("| experiment | metric | standard | fixed ETF | implicit ETF |")
    # every seed fits the quick UFM: 100% shown once, with the human label
    assert md.splitlines()[2].startswith("| ufm10 | train top-1 (%) | 100.0")
    pm = plots.paper_table_markdown(paper.TABLE1)
    assert "| CIFAR10 ResNet18 | 87.42 | 96.69 | 86.89 | 97.18 | 88.71 | 98.09 |" in pm
    cap = results.provenance_caption(quick["provenance"])
    assert "command : python -m guiding_nc.experiments.reproduce" in cap and "runs at : commit" in cap
    clean = dict(quick["provenance"], run_commits=["abc"])
    assert "-dirty" not in results.provenance_caption(clean)  # the legend only where a commit has the suffix
    assert "-dirty: code changes not committed" in results.provenance_caption(dict(clean, run_commits=["abc-dirty"]))


def test_steps_to_fit_and_significant_digit_tables(quick):
    runs = [{"config": "u", "method": m, "seed": s, "steps": 50} for m in ("standard", "implicit") for s in (0, 1)]
    summary = {"u/default/standard": {"seeds": [0, 1], "steps_to_fit": {"median": 7.5, "min": 7, "max": 8, "missing": 0}},
               "u/default/implicit": {"seeds": [0, 1], "steps_to_fit": {"median": 2, "min": 2, "max": 2, "missing": 1}},
               "u/default/fixed": {"seeds": [0], "steps_to_fit": {"median": None, "min": None, "max": None, "missing": 1}}}
    md = plots.steps_to_fit_markdown({"long": {"runs": runs, "summary": summary}, "none": {"runs": [], "summary": {}}},
                                     configs=["u"], titles={"u": "UFM-u"})
    lines = md.splitlines()
    assert len(lines) == 3  # a result set without runs of the config adds no row
    # Methods with different numbers of seeds (a grid part-way through its slices) show each count.
    assert lines[2] == "| UFM-u | long | 50 | 7.5 [7, 8] | not fitted (1) | 2 [2, 2], 1 not fitted | 2/1/2 |"
    summary["u/default/fixed"]["seeds"] = [0, 1]
    md = plots.steps_to_fit_markdown({"long": {"runs": runs, "summary": summary}}, configs=["u"])
    assert md.splitlines()[2].endswith("| 2 |")
    small = {"u/default/implicit": {"train_nc1": {"median": 1.234e-7, "min": 1e-7, "max": 2e-7}}}
    md = plots.summary_table_markdown(small, configs=["u"], key_at=["train_nc1"], methods=["implicit"], scale=1.0,
                                      digits=3, number_format="g")
    assert md.replace("\u00a0", " ").splitlines()[2] == "| u | NC1 (train) | 1.23e-07 [1e-07, 2e-07] |"
    # without explicit formatting, a key's own rule: accuracies in percent, to 0.1 point
    acc = {"u/default/implicit": {"test_top1@200": {"median": 0.97345, "min": 0.9612, "max": 0.9801}}}
    md = plots.summary_table_markdown(acc, configs=["u"], key_at=["test_top1@200"], methods=["implicit"])
    assert md.replace("\u00a0", " ").splitlines()[2] == "| u | test top-1 (%), epoch 200 | 97.3 [96.1, 98.0] |"


def test_paper_tables_have_every_experiment_and_method():
    assert len(paper.TABLE1) == len(paper.TABLE2) == 7
    for t in (paper.TABLE1, paper.TABLE2):
        for row in t.values():
            assert set(row) == set(paper.PAPER_METHODS) and all(len(v) == 2 and 0 < v[0] <= 100 for v in row.values())
    assert paper.TABLE3["UFM-200"]["implicit, DDN on"] == 70.3 and paper.TABLE3["UFM-1000"]["implicit, DDN on"] is None


def test_method_curves_figure(quick):
    fig = plots.plot_method_curves(quick, config="ufm10", x="epoch",
                                   metrics=[("train_top1", "train top-1 (%)", False), ("train_nc1", "NC1", True)])
    assert isinstance(fig, Figure)
    _labelled(fig)
    ax_acc, ax_nc1 = fig.axes
    assert ax_nc1.get_yscale() == "log" and ax_acc.get_yscale() == "linear"
    labels = {t.get_text() for t in ax_acc.get_legend().get_texts()}
    assert len(labels) == 3  # one band per method
    assert max(max(line.get_ydata()) for line in ax_acc.get_lines()) > 1.0  # percent, not a fraction


def test_paper_comparison_puts_each_setting_beside_the_papers_row():
    from guiding_nc.experiments import paper
    from guiding_nc.companions.plotting.experiments import paper_comparison_markdown

    def cell(v):
        return {"median": v, "min": v, "max": v, "n": 1}

    summary = {
        f"{cfg}/default/{m}": {"train_top1@50": cell(v), "train_top1@200": cell(v + 0.01)}
        for cfg in ("cifar10_resnet18", "digits_mlp")
        for m, v in (("standard", 0.80), ("fixed", 0.81), ("implicit", 0.85))
    }
    md = paper_comparison_markdown(summary, paper.TABLE1, metric="train_top1",
                                   configs=["cifar10_resnet18", "digits_mlp"],
                                   paper_row_of=paper.PAPER_ROW_OF_CONFIG, titles={"digits_mlp": "digits"})
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| CIFAR10 ResNet18 | paper"))
    # the book's row for the same setting comes right after the paper's, with its gap in points
    assert lines[i + 1].startswith("|  | this book |")
    assert lines[i + 1].rstrip(" |").endswith("+5.00 | +5.00")
    assert "87.42" in lines[i] and "+1.29" in lines[i]
    assert lines[-1].startswith("| digits | this book; no row in the paper |")
    assert len(lines) == 2 + len(paper.TABLE1) + 2
