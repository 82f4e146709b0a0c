"""The package's layers are folders (README, "The package, layer by layer"), and one rule holds:
a folder imports only from the folders before it.  Beside the folders stand the public API
(``__init__``) and thin command shims (the ``python -m`` paths that committed provenance
records); no module imports another module's private names, and none is too long to live in."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "guiding_nc"

# The layers, in order: each folder may import from itself and the folders before it.
FOLDERS = ("core", "training", "experiments", "research", "companions")
# Command paths kept for the commands written in committed provenance, the README and the Makefile:
# each only imports `main` from where the command lives.
SHIMS = {"train", "bench", "notebooks", "gpu_check", "experiments.reproduce", "experiments.forward_gradients",
         "experiments.reduction_mappings", "experiments.explorer_grid"}
MAX_LINES = 600


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
        yield ".".join(parts), path


def _folder(name: str):
    top = name.split(".")[0]
    return FOLDERS.index(top) if top in FOLDERS else None


def _imports(name: str, path: Path):
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield (target or "__init__"), alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("guiding_nc."):
            for alias in node.names:
                yield node.module[len("guiding_nc."):], alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("guiding_nc."):
                    yield alias.name[len("guiding_nc."):], ""


def test_every_module_lives_in_a_layer_folder_or_is_a_shim():
    loose = [n for n, _ in _modules() if _folder(n) is None and n not in SHIMS and n != "__init__"]
    assert not loose, f"modules outside the layer folders {FOLDERS}: {loose}"


def test_a_folder_imports_only_from_the_folders_before_it():
    bad = []
    for name, path in _modules():
        here = _folder(name)
        if here is None or name in SHIMS:
            continue
        for target, _ in _imports(name, path):
            there = _folder(target)
            if there is None:
                bad.append(f"{name} imports {target}, which is in no layer folder")
            elif there > here:
                bad.append(f"{name} ({FOLDERS[here]}/) imports {target} ({FOLDERS[there]}/)")
    assert not bad, "\n".join(bad)


def test_shims_only_hand_over_to_the_command():
    for name in SHIMS:
        path = PKG / (name.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert len(body) == len(imports) + 1, f"{name}: a shim holds imports and the __main__ guard only"
        names = {a.name for n in imports if isinstance(n, ast.ImportFrom) for a in n.names}
        assert names == {"main"}, f"{name} imports {names}, not just main"


def test_the_public_api_imports_from_the_layers():
    targets = {t for t, _ in _imports("__init__", PKG / "__init__.py")}
    assert targets and all(_folder(t) is not None for t in targets), targets


def test_no_module_imports_another_modules_private_names():
    bad = [f"{name} imports {alias} from {target}" for name, path in _modules()
           for target, alias in _imports(name, path)
           if alias.startswith("_") and not alias.startswith("__") and target != name]
    assert not bad, "\n".join(bad)


def test_modules_stay_small_enough_to_live_in():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules()}
    over = {n: k for n, k in long.items() if k > MAX_LINES}
    assert not over, f"split these along their seams (at most {MAX_LINES} lines): {over}"


def test_no_module_re_exports_another_modules_names():
    """One import path per name: a module's ``__all__`` lists only what it defines (the package's
    public API, ``guiding_nc/__init__.py``, is the one place that gathers names)."""
    bad = []
    for name, path in _modules():
        if name == "__init__" or name in SHIMS:
            continue
        tree = ast.parse(path.read_text())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        for n in tree.body:
            targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
            for t in targets:
                for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(e, ast.Name):
                        defined.add(e.id)
        exported = next((n.value for n in tree.body if isinstance(n, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)), None)
        if exported is None:
            continue
        names = [e.value for e in exported.elts] if isinstance(exported, (ast.List, ast.Tuple)) else []
        bad += [f"{name} exports {n}, defined elsewhere" for n in names if n not in defined]
    assert not bad, "\n".join(bad)


def test_the_public_api_offers_the_layer_the_heads_the_metrics_and_the_trainer():
    import guiding_nc as gnc

    for name in ("nearest_etf", "NearestETF", "etf_classifier", "build_head", "METHODS", "ImplicitETFHead",
                 "neural_collapse_metrics", "nc1", "TrainConfig", "Trainer", "train_run"):
        assert name in gnc.__all__, name
    assert all(getattr(gnc, n) is not None for n in gnc.__all__)
    assert len(set(gnc.__all__)) == len(gnc.__all__)
