"""The UFM-scaling chapter's computed sentences say what the runs hold (synthetic runs)."""
from guiding_nc.companions import scaling as sc


def _runs(variant, counts, key="steps_to_fit", config="ufm10"):
    flag = "fitted" if key == "steps_to_fit" else "reached_" + key[len("steps_to_"):]
    return [{"config": config, "variant": variant, "method": m, key: n, flag: n is not None}
            for m, seeds in counts.items() for n in seeds]


def test_protocol_agreement_counts_equal_medians_and_names_the_cells_that_differ():
    one = {"runs": _runs("default", {"standard": [10, 9, 10], "fixed": [3, 3, 3], "implicit": [2, 2, 2]})}
    same = {"runs": _runs("default", {"standard": [10, 10, 11], "fixed": [3, 3, 4], "implicit": [2, 1, 2]})}
    text = sc.protocol_agreement([("fit", same, "default", one, "default", "steps_to_fit")], ["ufm10"])
    assert "3 of the 3 cells" in text and "differ" not in text
    other = {"runs": _runs("default", {"standard": [10, 10, 10], "fixed": [5, 5, 5], "implicit": [None] * 3})}
    text = sc.protocol_agreement([("fit", other, "default", one, "default", "steps_to_fit")], ["ufm10"])
    assert "1 of the 3 cells" in text
    assert "fixed ETF: 5 against 3" in text and "implicit ETF: never against 2" in text


def test_protocol_agreement_without_runs_says_so():
    empty = {"runs": []}
    assert "not in yet" in sc.protocol_agreement([("fit", empty, "default", empty, "default", "steps_to_fit")],
                                                 ["ufm10"])


def test_the_offset_sentence_reports_the_order_and_both_measures():
    runs = (_runs("agd_offset_1e-2", {"standard": [177] * 5, "fixed": [98] * 5, "implicit": [98] * 5},
                  key="steps_to_loss")
            + _runs("agd_offset_1e-2", {"standard": [10] * 5, "fixed": [3] * 5, "implicit": [2] * 5}))
    rows = []  # one record per (method, seed) holding both measures
    for m in ("standard", "fixed", "implicit"):
        loss = [r for r in runs if r["method"] == m and "steps_to_loss" in r]
        fit = [r for r in runs if r["method"] == m and "steps_to_fit" in r]
        rows += [{**a, **b, "train_top1_step0": 0.1} for a, b in zip(loss, fit)]
    text = sc.confounds_reading([], rows, ["ufm10"])
    assert "holds at no size of 1" in text  # a tie is not "strictly first"
    assert "UFM-10 177 / 98 / 98" in text and "UFM-10 10 / 3 / 2" in text
