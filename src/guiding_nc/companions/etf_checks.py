"""The simplex-ETF chapter's checks (book chapter "Simplex ETFs and the neural-collapse metrics"):
every formula of the chapter evaluated on exact and random inputs, each check a table whose
numbers ``tests/test_chapter_checks.py`` asserts (a table's ``values`` holds them), and the
chapter's live UFM runs.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..core.class_statistics import ClassStatistics
from ..core.etf import canonical_point, etf_classifier, orthonormality_error, random_point, simplex_etf
from ..core.metric_formulas import (cosine_margin, equinorm, max_cosine_margin, nc1, nc2, nc3,
                                    ncc_mismatch)
from ..core.metrics import neural_collapse_metrics
from .tables import METHOD_LABELS, Table, table

__all__ = ["construction", "identities", "reflection", "equiangular_gram", "gram_spectrum", "cosine_bound",
           "extremes", "covariances", "nc1_checks", "nc2_checks", "nc3_checks", "nc4_checks",
           "equinorm_checks", "margin_checks", "metric_suite", "train_ufm", "collapse_steps", "plane_steps",
           "plane_summary"]

F64 = torch.float64


def _valued(t: Table, values: Mapping[str, Any]) -> Table:
    t.values = dict(values)
    return t


def _e(x: float) -> str:
    return f"{x:.1e}"


def construction(C: int, d: int, gen: torch.Generator) -> Table:
    """The simplex ETF ``U M`` against Eq. 1 with ``alpha = 1`` and the classifier of Eq. 8, at the
    canonical and a Haar-random Stiefel point."""
    centring = torch.eye(C, dtype=F64) - torch.ones(C, C, dtype=F64) / C
    rows, values = [], {}
    for name, U in (("canonical", canonical_point(d, C, dtype=F64)),
                    ("Haar-random", random_point(d, C, generator=gen, dtype=F64))):
        E = simplex_etf(C, d, U)  # (d, C), unit Frobenius norm
        eq1 = math.sqrt(C / (C - 1)) * U @ centring
        norms = E.norm(dim=0) * C ** 0.5
        v = {"orth": orthonormality_error(U), "fro": float(E.norm()), "norm_lo": float(norms.min()),
             "norm_hi": float(norms.max()), "eq1": float((C ** 0.5 * E - eq1).abs().max()),
             "classifier": float((etf_classifier(U) - C ** 0.5 * E.T).abs().max())}
        values[name] = v
        rows.append([name, _e(v["orth"]), f"{v['fro']:.6f}", f"[{v['norm_lo']:.6f}, {v['norm_hi']:.6f}]",
                     _e(v["eq1"]), _e(v["classifier"])])
    return _valued(table(["U", "max |UᵀU − I|", "‖E‖_F", "column norms × √C", "max |√C E − Eq. 1|",
                          "max |W − √C Eᵀ|"], rows, align="lrrrrr"), values)


def identities(Cs: Sequence[int], gen: torch.Generator, extra_dim: int = 5) -> Table:
    """The Gram identity {eq}`eq-etf-gram` and what follows from it, for several ``C``."""
    rows, values = [], {}
    for C in Cs:
        for rotation in ("canonical", "random"):
            V = C ** 0.5 * simplex_etf(C, C + extra_dim, rotation, generator=gen, dtype=F64)  # unit vertices
            G = V.T @ V
            off = G[~torch.eye(C, dtype=torch.bool)]
            target = C / (C - 1) * (torch.eye(C, dtype=F64) - 1.0 / C)
            v = {"norm": float((V.norm(dim=0) - 1).abs().max()), "cos": float((off + 1 / (C - 1)).abs().max()),
                 "sum": float(V.sum(1).norm()), "rank": int(torch.linalg.matrix_rank(V)),
                 "gram": float((G - target).abs().max())}
            values[(C, rotation)] = v
            rows.append([C, rotation, _e(v["norm"]), _e(v["cos"]), _e(v["sum"]), v["rank"], _e(v["gram"])])
    return _valued(table(["C", "rotation", "max |‖v_c‖ − 1|", "max |cos + 1/(C−1)|", "‖Σ v_c‖", "rank",
                          "max |Gram − C/(C−1)(I − 11ᵀ/C)|"], rows, align="rlrrrrr"), values)


def reflection(C: int, d: int, gen: torch.Generator) -> Table:
    """A Stiefel point and its reflection along ``1/sqrt(C)`` give the same ETF."""
    U = random_point(d, C, generator=gen, dtype=F64)
    R = U @ (torch.eye(C, dtype=F64) - 2.0 * torch.ones(C, C, dtype=F64) / C)
    v = {"orth": orthonormality_error(R), "moved": float((U - R).norm()),
         "etf": float((simplex_etf(C, d, U) - simplex_etf(C, d, R)).norm())}
    return _valued(table(["check", "value"], [["U′ on the Stiefel manifold: max |U′ᵀU′ − I|", _e(v["orth"])],
                                              ["‖U − U′‖_F", f"{v['moved']:.3f}"],
                                              ["‖U M − U′ M‖_F", _e(v["etf"])]], align="lr"), v)


def equiangular_gram(C: int, gamma: float) -> Tensor:
    """The Gram matrix ``(1 - gamma) I + gamma 1 1^T`` of ``C`` unit vectors with common cosine ``gamma``."""
    return (1 - gamma) * torch.eye(C, dtype=F64) + gamma * torch.ones(C, C, dtype=F64)


def gram_spectrum(Cs: Sequence[int], gammas: Tensor) -> Dict[int, Tensor]:
    """The smallest eigenvalue of :func:`equiangular_gram` along ``gammas``, for each ``C``."""
    return {C: torch.stack([torch.linalg.eigvalsh(equiangular_gram(C, float(g))).min() for g in gammas])
            for C in Cs}


def cosine_bound(Cs: Sequence[int], gen: torch.Generator, samples: int = 2000) -> Table:
    """The bound ``gamma >= -1/(C-1)``: the ETF's vertices sum to zero, the equiangular Gram matrix
    turns indefinite just below the bound, and no random set of ``C`` unit vectors has its largest
    pairwise cosine below it."""
    rows, values = [], {}
    for C in Cs:
        bound = -1.0 / (C - 1)
        V = C ** 0.5 * simplex_etf(C, C, "random", generator=gen, dtype=F64)
        lam = float(torch.linalg.eigvalsh(equiangular_gram(C, bound - 1e-3)).min())
        X = torch.nn.functional.normalize(torch.randn(samples, C, C, generator=gen, dtype=F64), dim=1)
        largest = (X.transpose(1, 2) @ X).masked_fill(torch.eye(C, dtype=torch.bool), -2.0).amax(dim=(1, 2))
        v = {"sum_sq": float(V.sum(1).norm() ** 2), "lam_below": lam, "min_largest": float(largest.min()),
             "bound": bound, "holds": bool((largest >= bound).all())}
        values[C] = v
        rows.append([C, _e(v["sum_sq"]), f"{lam:+.4f}", f"{v['min_largest']:+.4f}", f"{bound:+.4f}",
                     "yes" if v["holds"] else "no"])
    return _valued(table(["C", "‖Σ vertices‖²", "smallest Gram eigenvalue at γ = bound − 10⁻³",
                          f"{samples} random sets: smallest largest cosine", "bound −1/(C−1)", "all above"],
                         rows), values)


def extremes(C: int, d: int, per_class: int, s: float, gen: torch.Generator) -> Dict[str, Any]:
    """The chapter's two data sets: collapsed features ``mu + s v_c`` with the matching ETF
    classifier and bias ``-W mu``, and Gaussian features, labels and classifier; with their
    :class:`ClassStatistics`."""
    labels = torch.arange(C).repeat_interleave(per_class)
    N = labels.numel()
    U = random_point(d, C, generator=gen, dtype=F64)
    W = etf_classifier(U)  # (C, d): rows are the unit vertices v_c
    mu = torch.randn(d, generator=gen, dtype=F64)
    data = {"collapsed": {"features": mu + s * W[labels], "W": W, "b": -W @ mu},
            "random": {"features": torch.randn(N, d, generator=gen, dtype=F64),
                       "W": torch.randn(C, d, generator=gen, dtype=F64), "b": torch.zeros(C, dtype=F64)}}
    stats = {k: ClassStatistics(C, d).update(v["features"], labels) for k, v in data.items()}
    return {"C": C, "d": d, "N": N, "s": s, "labels": labels, "U": U, "W": W, "mu": mu, "data": data,
            "stats": stats}


def covariances(ex: Mapping[str, Any]) -> Table:
    """Sigma_W + Sigma_B = the total covariance; at collapse Sigma_W = 0 and Sigma_B = s^2/C V V^T."""
    rows, values = [], {}
    for name, data in ex["data"].items():
        st = ex["stats"][name]
        Sw, Sb = st.within_class_covariance(), st.between_class_covariance()
        total = torch.cov(data["features"].T, correction=0)
        v = {"sw": float(Sw.norm()), "rank_sb": int(torch.linalg.matrix_rank(Sb)),
             "sum": float((Sw + Sb - total).abs().max())}
        values[name] = v
        rows.append([name, f"{v['sw']:.2e}", v["rank_sb"], _e(v["sum"])])
    Sb_expected = ex["s"] ** 2 / ex["C"] * ex["W"].T @ ex["W"]
    values["sb_collapsed"] = float((ex["stats"]["collapsed"].between_class_covariance() - Sb_expected).abs().max())
    t = table(["data", "‖Σ_W‖_F", "rank Σ_B", "max |Σ_W + Σ_B − total covariance|"], rows,
              note=f"Collapsed: max |Σ_B − s²/C V Vᵀ| = {values['sb_collapsed']:.1e}.")
    return _valued(t, values)


def nc1_checks(ex: Mapping[str, Any], gen: torch.Generator) -> Table:
    """NC1 by its formula, its invariance to scale, and its blindness to spread orthogonal to
    the class means."""
    C, d, labels = ex["C"], ex["d"], ex["labels"]
    st = ex["stats"]["random"]
    by_formula = float(torch.trace(st.within_class_covariance() @ torch.linalg.pinv(st.between_class_covariance()))
                       / C)
    scaled = float(nc1(ClassStatistics(C, d).update(7.5 * ex["data"]["random"]["features"], labels)))
    noise = torch.randn(ex["N"], d, generator=gen, dtype=F64)
    noise = noise - noise @ ex["U"] @ ex["U"].T  # orthogonal to every class mean ...
    noise = noise - ClassStatistics(C, d).update(noise, labels).class_means()[labels]  # ... zero mean per class
    orth = ClassStatistics(C, d).update(ex["data"]["collapsed"]["features"] + noise, labels)
    v = {"random": float(nc1(st)), "formula": by_formula, "scaled": scaled,
         "collapsed": float(nc1(ex["stats"]["collapsed"])), "orth_sw": float(orth.within_class_covariance().norm()),
         "orth": float(nc1(orth))}
    rows = [["random features", f"{v['random']:.6f}", f"tr(Σ_W Σ_B⁺)/C = {v['formula']:.6f}"],
            ["random features × 7.5", f"{v['scaled']:.6f}", "the same: NC1 ignores scale"],
            ["collapsed", _e(v["collapsed"]), "0"],
            ["collapsed + noise orthogonal to the means", _e(v["orth"]),
             f"0, although ‖Σ_W‖_F = {v['orth_sw']:.3f}"]]
    return _valued(table(["features", "nc1", "expected"], rows, align="lrl"), v)


def nc2_checks(ex: Mapping[str, Any], gen: torch.Generator) -> Table:
    """NC2 is zero for any simplex ETF, scaled and rotated, and not otherwise."""
    d, C, W = ex["d"], ex["C"], ex["W"]
    Q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))[0]  # a random rotation of R^d
    v = {"etf": float(nc2(W)), "scaled_rotated": float(nc2(0.3 * W @ Q)),
         "canonical": float(nc2(etf_classifier(canonical_point(d, C, dtype=F64)))),
         "random": float(nc2(ex["data"]["random"]["W"])),
         "means_collapsed": float(nc2(ex["stats"]["collapsed"].centred_means().T)),
         "means_random": float(nc2(ex["stats"]["random"].centred_means().T))}
    rows = [["ETF classifier", _e(v["etf"])], ["0.3 × ETF classifier, rotated", _e(v["scaled_rotated"])],
            ["canonical ETF classifier", _e(v["canonical"])], ["random classifier", f"{v['random']:.4f}"],
            ["centred means, collapsed", _e(v["means_collapsed"])],
            ["centred means, random", f"{v['means_random']:.4f}"]]
    return _valued(table(["matrix", "nc2"], rows, align="lr"), v)


def nc3_checks(ex: Mapping[str, Any]) -> Table:
    """NC3 needs classifier and means to agree: two ETFs of different orientation have NC2 = 0
    and NC3 > 0."""
    d, C = ex["d"], ex["C"]
    Hbar = ex["stats"]["collapsed"].centred_means()
    Wc = etf_classifier(canonical_point(d, C, dtype=F64))
    v = {"own": float(nc3(ex["W"], Hbar)), "canonical_nc2": float(nc2(Wc)), "means_nc2": float(nc2(Hbar.T)),
         "canonical": float(nc3(Wc, Hbar)),
         "random": float(nc3(ex["data"]["random"]["W"], ex["stats"]["random"].centred_means()))}
    rows = [["collapsed means, their own ETF classifier", "–", _e(v["own"])],
            ["the same means, the canonical ETF classifier", f"{v['canonical_nc2']:.1e} (W), {v['means_nc2']:.1e} "
             "(means)", f"{v['canonical']:.4f}"],
            ["random features and classifier", "–", f"{v['random']:.4f}"]]
    return _valued(table(["case", "nc2", "nc3"], rows, align="lrr"), v)


def nc4_checks(ex: Mapping[str, Any]) -> Table:
    """The nearest-class-mean mismatch (NC4): zero at collapse, about chance for random data."""
    C, values, rows = ex["C"], {}, []
    for name, data in ex["data"].items():
        m = float(ncc_mismatch(data["features"], data["W"], data["b"], ex["stats"][name].class_means()))
        values[name] = m
        rows.append([name, f"{m:.3f}", f"chance level (C−1)/C = {(C - 1) / C:.3f}" if name == "random" else "0"])
    return _valued(table(["data", "NCC mismatch", "expected"], rows, align="lrl"), values)


def equinorm_checks(ex: Mapping[str, Any]) -> Table:
    """Equinorm is zero at collapse and grows when one class mean is stretched."""
    C, d, labels, mu = ex["C"], ex["d"], ex["labels"], ex["mu"]
    stretched = ex["data"]["collapsed"]["features"].clone()
    stretched[labels == 0] = mu + 2.0 * (stretched[labels == 0] - mu)  # class 0 twice as far out
    Hs = ClassStatistics(C, d).update(stretched, labels).centred_means()
    lengths = Hs.norm(dim=0)
    Hbar = ex["stats"]["collapsed"].centred_means()
    v = {"collapsed": float(equinorm(ex["W"], Hbar)), "stretched": float(equinorm(ex["W"], Hs)),
         "cv": float(lengths.std(unbiased=False) / lengths.mean())}
    rows = [["collapsed", _e(v["collapsed"])],
            ["class 0 stretched twice as far", f"{v['stretched']:.6f} (std/mean of the means' lengths: "
             f"{v['cv']:.6f})"]]
    return _valued(table(["features", "equinorm"], rows, align="lr"), v)


def margin_checks(ex: Mapping[str, Any], gen: torch.Generator, samples: int = 20000) -> Table:
    """Cosine margins: ``C/(C-1)`` for every sample at collapse, never above it."""
    C, d, labels = ex["C"], ex["d"], ex["labels"]
    rows, values = [], {}
    for name, data in ex["data"].items():
        cm = cosine_margin(data["features"], labels, data["W"], ex["stats"][name].global_mean())
        values[name] = (float(cm.min()), float(cm.max()))
        rows.append([name, f"[{values[name][0]:+.6f}, {values[name][1]:+.6f}]"])
    h = torch.randn(samples, d, generator=gen, dtype=F64)
    y = torch.randint(0, C, (samples,), generator=gen)
    values["random_vs_etf"] = float(cosine_margin(h, y, ex["W"], torch.zeros(d, dtype=F64)).max())
    values["max"] = max_cosine_margin(C)
    rows.append([f"{samples} random features, ETF classifier", f"largest {values['random_vs_etf']:.6f}"])
    return _valued(table(["data", "cosine margins"], rows, align="lr",
                         note=f"C/(C−1) = max_cosine_margin({C}) = {values['max']:.6f}."), values)


def metric_suite(ex: Mapping[str, Any]) -> Table:
    """:func:`neural_collapse_metrics` on both data sets, beside each metric's ideal value."""
    C = ex["C"]
    res = {name: neural_collapse_metrics([(data["features"], ex["labels"])], data["W"], data["b"], num_classes=C)
           for name, data in ex["data"].items()}
    ideal = {"top1": "1", "cosine_margin_mean": f"C/(C−1) = {C / (C - 1):.4f}",
             "cosine_margin_min": f"C/(C−1) = {C / (C - 1):.4f}"}
    keys = ("nc1", "nc2", "nc3", "equinorm", "ncc_mismatch", "top1", "cosine_margin_mean", "cosine_margin_min")
    rows = [[k, f"{res['collapsed'][k]:.2e}", f"{res['random'][k]:.2e}", ideal.get(k, "0")] for k in keys]
    return _valued(table(["metric", "collapsed", "random", "ideal"], rows, align="lrrl"), res)


def train_ufm(method: str, sizes: Mapping[str, int], *, seed: int, out: str, device: str = "cpu",
              snapshot_steps: Sequence[int] = ()) -> Tuple[Dict[str, Any], List[Tuple[int, Tensor, Tensor]], Tensor]:
    """A UFM of the paper's settings (``configs/ufm10.yaml``) with ``sizes`` and one classifier,
    trained by the project's :class:`~guiding_nc.training.trainer.Trainer`: its result, snapshots
    ``(step, features as the classifier sees them, classifier)`` at ``snapshot_steps`` (step 0
    included when asked) and the training labels."""
    from ..training.config import load_config
    from ..training.trainer import Trainer

    cfg = load_config("ufm10", {**sizes, "batch_size": sizes["num_samples"], "method": method, "seed": seed,
                                "output_dir": str(out), "name": f"ufm-c{sizes['num_classes']}", "device": device,
                                "report_epochs": [], "checkpoint_every": 0, "timing": "off", "progress": False,
                                "verbose": False})
    snapshots: List[Tuple[int, Tensor, Tensor]] = []

    def snapshot(event, trainer):
        if event == "step_end" and trainer.global_step in snapshot_steps:
            h = trainer.head.transform(trainer.network.backbone.features.detach())
            snapshots.append((trainer.global_step, h.clone(), trainer.head.weight.detach().clone()))

    trainer = Trainer(cfg, callbacks=[snapshot])
    snapshot("step_end", trainer)  # step 0: the initial features and classifier
    return trainer.fit(), snapshots, trainer.train_ds.targets


def _first_below(history: Sequence[Mapping[str, Any]], key: str, threshold: float) -> Optional[int]:
    return next((row["step"] for row in history if row.get(key) is not None and row[key] < threshold), None)


def collapse_steps(runs: Mapping[str, Mapping[str, Any]], thresholds: Mapping[str, float], C: int) -> Table:
    """The first evaluated step at which each metric drops below its threshold ("–": not in this
    run), and the final values, one row per method."""
    rows, values = [], {}
    for m, r in runs.items():
        firsts = [_first_below(r["history"], k, t) for k, t in thresholds.items()]
        final = r["final_eval"]
        values[m] = firsts
        rows.append([METHOD_LABELS.get(m, m)] + ["–" if s is None else s for s in firsts]
                    + [f"{final[k]:.1e}" for k in thresholds] + [f"{final['train_cosine_margin_mean']:.4f}"])
    head = (["method"] + [f"{k[6:]} < {t:g} at step" for k, t in thresholds.items()]
            + [f"final {k[6:]}" for k in thresholds] + ["final mean cosine margin"])
    return _valued(table(head, rows, note=f"The mean cosine margin is at most C/(C−1) = {max_cosine_margin(C):.4f}."),
                   values)


def plane_steps(epochs: int) -> List[int]:
    """The steps at which the three-class runs are drawn: 0, the first few, a fifteenth, a fifth, the end."""
    return sorted({0, max(1, epochs // 50), epochs // 15, epochs // 5, epochs})


def plane_summary(plane_runs: Mapping[str, Tuple[Mapping[str, Any], Any, Any]]) -> Table:
    """The final NC1, NC3 and mean cosine margin of the three-class runs."""
    rows = []
    for m, (r, _, _) in plane_runs.items():
        f = r["final_eval"]
        rows.append([METHOD_LABELS.get(m, m), f"{f['train_nc1']:.1e}", f"{f['train_nc3']:.1e}",
                     f"{f['train_cosine_margin_mean']:.4f}"])
    return table(["method (C = 3)", "final nc1", "final nc3", "final mean cosine margin"], rows,
                 note=f"The mean cosine margin is at most {max_cosine_margin(3):.4f} for three classes.")
