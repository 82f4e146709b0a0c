"""The one-difference-at-a-time table's rule (guiding_nc.experiments.protocol_effects)."""
from guiding_nc.experiments.protocol_effects import correct_counts, switch_effects


def _runs(variant, method, train_counts, n=1000, test=None):
    rows = []
    for s, k in enumerate(train_counts):
        rows.append({"config": "c", "variant": variant, "method": method, "seed": s,
                     # fractions as a results file holds them, with float noise
                     "train_top1": k / n + (1e-17 if s % 2 else 0.0), "train_n": n,
                     "test_top1": (test or train_counts)[s] / n, "test_n": n})
    return rows


def test_counts_are_integers_whatever_the_float_noise():
    runs = _runs("paper", "fixed", [71, 929, 500])
    assert correct_counts(runs, "c", "paper", "fixed") == [71, 929, 500]
    assert correct_counts(runs, "c", "paper", "implicit") is None


def test_a_difference_matters_only_beyond_the_base_seed_range_in_samples():
    runs = (_runs("paper", "fixed", [300, 310, 320]) + _runs("paper+fixed_centring", "fixed", [329, 331, 330])
            + _runs("paper", "standard", [900, 900, 900]) + _runs("paper+standard_sampler", "standard", [900, 901, 902])
            + _runs("one_switch", "fixed", [900, 950, 990]) + _runs("one_switch+fixed_centring", "fixed", [990, 990, 991]))
    rows = {(r["base"], r["option"], r["method"]): r for r in switch_effects(runs, "c")}
    a = rows[("paper", "fixed_centring", "fixed")]
    assert (a["change_samples"], a["base_range_samples"], a["matters"]) == (20, 20, False)  # equal: not more
    b = rows[("paper", "standard_sampler", "standard")]
    assert (b["change_samples"], b["base_range_samples"], b["matters"]) == (1, 0, True)
    assert (b["from"], b["to"]) == ("shuffled", "stratified")
    c = rows[("one_switch", "fixed_centring", "fixed")]
    assert c["change_samples"] == 40 and c["base_range_samples"] == 90 and not c["matters"]
    assert (c["from"], c["to"]) == ("running", "batch_detached")
    assert abs(c["train"]["median"] - 99.0) < 1e-12 and abs(c["base_train"]["min"] - 90.0) < 1e-12


def test_a_variant_without_its_base_runs_has_no_verdict():
    rows = switch_effects(_runs("paper+fixed_sampler", "fixed", [1, 2, 3]), "c")
    assert rows and not rows[0]["complete"] and "matters" not in rows[0]


def test_missing_switches_text_lists_the_cells_short_of_seeds_and_the_command():
    from guiding_nc.companions.protocols import missing_switches_text
    from guiding_nc.experiments.spec import load_experiment

    spec = load_experiment("protocol_switches")
    full = [{"config": "digits_mlp", "variant": name, "method": m, "seed": s}
            for name, v in spec.variants.items() for m in (v or {}).get("methods") or spec.methods
            for s in spec.seeds]
    assert missing_switches_text(full, "digits_mlp") == ""
    short = [r for r in full if not (r["variant"] == "paper+agd_depth" and r["method"] == "fixed" and r["seed"] > 1)]
    text = missing_switches_text(short, "digits_mlp")
    assert "`paper+agd_depth` fixed ETF (2 of 5)" in text and text.count("(") == 2
    assert "reproduce protocol_switches --configs digits_mlp" in text


def test_method_switches_text_gives_each_single_switch_with_its_dead_units():
    from guiding_nc.companions.protocols import method_switches_text

    def runs(variant, top1, dead):
        return [{"config": "digits_mlp", "variant": variant, "method": "fixed", "seed": s, "train_top1": top1,
                 "train_n": 1000, "test_top1": top1, "test_n": 100, "train_dead_units": dead} for s in range(3)]

    data = runs("paper", 0.25, 20) + runs("paper+final_activation", 0.24, 0) + runs("one_switch", 0.93, 0)
    text = method_switches_text(data, "digits_mlp")
    assert "from the released protocol, 25.0% (20 dead): `final_activation` alone 24.0% (0 dead)" in text
    assert "one-switch" not in text  # no switch from it: no line
    assert method_switches_text(data, "digits_mlp", method="implicit") == ""
