"""The cost experiment measures real steps in subprocesses and skips the dense gradient past its cap."""
import json

import pytest
from conftest import in_git_checkout

from guiding_nc.experiments import cost


def test_quick_cost_end_to_end(tmp_path):
    res = cost.run(["ufm10"], steps=2, quick=True, threads=1, out=tmp_path, progress=False, kkt_cap_gb=4.0)
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {v[0] for v in cost.VARIANTS}
    for label, r in rows.items():
        assert r["status"] == "completed", r
        assert r["time_step_ms"] > 0 and r["peak_extra_gb"] >= 0 and r["steps"] == 2
        assert r["num_classes"] == 10 and r["feature_dim"] == 64
    assert rows["standard"]["time_etf_forward_ms"] == 0.0
    assert rows["implicit, DDN closed form"]["time_etf_forward_ms"] > 0
    assert rows["implicit, DDN closed form"]["time_ddn_backward_ms"] > 0
    assert rows["implicit, DDN off"]["time_ddn_backward_ms"] == 0.0
    saved = json.loads((tmp_path / "cost.json").read_text())
    assert saved["provenance"]["status"] == "completed"
    # The commit is recorded from a git checkout; from a source tarball there is none to record.
    assert bool(saved["provenance"]["git"]["commit"]) == in_git_checkout()
    assert (tmp_path / "cost.csv").read_text().count("\n") == len(cost.VARIANTS) + 1
    assert "ufm10" in cost.format_table(res["rows"])


def test_dense_kkt_past_the_cap_is_skipped_with_its_need(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(cost, "_spawn", lambda cmd: ran.append(cmd))
    monkeypatch.setattr(cost, "VARIANTS", (("implicit, DDN dense KKT", "implicit", "kkt"),))
    res = cost.run(["ufm200"], steps=2, out=tmp_path, progress=False, kkt_cap_gb=1.0)
    (row,) = res["rows"]
    assert row["status"].startswith("skipped") and not ran
    assert row["kkt_need_dtype"] == "float32" and 30 < row["kkt_need_gb"] < 40  # 2 x 4 B x dC^2(C+1)/2 + ...


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps must be >= 2"):
        cost.run(["ufm10"], steps=1, progress=False)
    with pytest.raises(SystemExit):
        cost.main(["--configs", "no_such_config"])
