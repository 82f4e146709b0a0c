"""Every experiment page runs through papermill in quick mode (what `make reproduce QUICK=1` does),
with its parameters injected, without an error, and writes result files that parse."""
import sys
import json

import pytest

from guiding_nc.training.config import ConfigError
from guiding_nc.experiments.results import load_results
from guiding_nc.experiments.notebooks import PAGES, page_parameters, run_page

# Pages whose quick mode writes a grid experiment's files into OUT, and where.
RESULT_DIRS = {"ufm10": "ufm10_quick/results", "ufm_scaling": "scaling_quick/results",
               "real_offline": "real_quick/results", "ablations": "ablations_quick/results"}


def _outputs(nb):
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("page", list(PAGES))
def test_every_experiment_page_runs_through_papermill(tmp_path, page):
    declared = page_parameters(page)
    assert "QUICK" in declared
    params = {"QUICK": True}
    if "OUT" in declared:
        params["OUT"] = str(tmp_path / "out")
    nb_path = run_page(page, params, output=tmp_path / f"{page}.ipynb", progress=False)
    nb = json.loads(nb_path.read_text())
    tags = [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]
    assert any("injected-parameters" in t for t in tags)
    errors = [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors, [f"{o['ename']}: {o['evalue']}" for o in errors]
    text = nb_path.read_text()
    assert str(tmp_path.parent.parent) not in text  # no local path of this machine in the notebook
    if page in RESULT_DIRS:
        res = load_results(tmp_path / "out" / RESULT_DIRS[page])
        assert res["runs"] and {"config", "variant", "method", "seed", "train_top1", "wall_time_s"} <= set(res["runs"][0])
        assert res["provenance"]["status"] == "completed"


def test_a_parameter_the_page_does_not_declare_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="declares no parameter.*EPOCHS"):
        run_page("ufm10", {"EPOCHS": 3}, output=tmp_path / "x.ipynb", progress=False)
    assert not (tmp_path / "x.ipynb").exists()
    with pytest.raises(ConfigError, match="unknown page"):
        run_page("nosuch", {}, output=tmp_path / "y.ipynb")


def test_committed_notebooks_name_no_local_path():
    """A warning in a cell's output names the file that raised it (in the interpreter's packages);
    the notebook written beside the results shows it without the machine's paths."""
    import sysconfig
    import tempfile

    from guiding_nc.training.config import project_root
    from guiding_nc.experiments.notebooks import _scrub, local_replacements

    site = sysconfig.get_paths()["purelib"]
    text = (f"{site}/torch/jit/_script.py:1491: FutureWarning\n{sys.prefix}/bin/python\n"
            f"{project_root()}/data/results/x\n{tempfile.gettempdir()}/guiding_nc_nb_1/a.ipynb")
    out = _scrub({"outputs": [{"text": [text]}]}, local_replacements())["outputs"][0]["text"][0]
    assert out.splitlines() == ["<site-packages>/torch/jit/_script.py:1491: FutureWarning", "<venv>/bin/python",
                                "data/results/x", "<tmp>/guiding_nc_nb_1/a.ipynb"]


TINY_PAGE = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A tiny page

```{code-cell} ipython3
:tags: [parameters]

QUICK = True
SEED = 0
```

```{code-cell} ipython3
if SEED == 1:
    raise RuntimeError("asked to fail")
print("quick" if QUICK else "full")
```
"""


def _tiny_book(tmp_path, monkeypatch):
    from guiding_nc.experiments import notebooks

    book = tmp_path / "book"
    book.mkdir()
    (book / "tiny.md").write_text(TINY_PAGE)
    monkeypatch.setattr(notebooks, "_book_dir", lambda: book)
    monkeypatch.setitem(notebooks.PAGES, "tiny", notebooks.Page("tiny", "tiny.md", "tiny"))
    return notebooks


@pytest.mark.slow
def test_reproduce_ends_with_a_summary_line_and_no_kernel_warning(tmp_path, monkeypatch, capfd):
    """What `make reproduce` prints: no warning from the kernel (it talks over IPC, not TCP), and
    a last line that says what ran and where its notebook is; a failing cell ends it with the page,
    the cell, the error and the notebook up to that cell."""
    notebooks = _tiny_book(tmp_path, monkeypatch)
    out_dir = tmp_path / "nb"
    assert notebooks.main(["--only", "tiny", "--quick", "--no-progress", "--out-dir", str(out_dir)]) == 0
    out, err = capfd.readouterr()
    assert "TCP" not in out + err, out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith("reproduced 1 page in quick mode in "), last
    assert "every cell ran without error" in last and last.endswith(f"tiny -> {out_dir / 'tiny.ipynb'}")
    assert (out_dir / "tiny.ipynb").is_file()

    assert notebooks.main(["--only", "tiny", "--quick", "--no-progress", "--out-dir", str(out_dir),
                           "-p", "SEED=1"]) == 1
    out, err = capfd.readouterr()
    assert "TCP" not in out + err
    last = err.strip().splitlines()[-1]
    # cell [3]: papermill puts the injected parameters before it
    assert last.startswith("reproduce failed: page tiny (book/tiny.md), cell [3] raised RuntimeError: "
                           "asked to fail; the notebook up to that cell: "), last
    failed = json.loads((out_dir / "tiny.ipynb").read_text())
    assert any(o.get("output_type") == "error" for c in failed["cells"] for o in c.get("outputs", []))
