"""The package's layers (README, "The package, layer by layer") hold: no module imports from a layer
below it, none imports another module's private names, and none is too long to live in."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "guiding_nc"

LAYERS = {
    0: ["etf", "polar", "nearest", "ddn", "trust_region", "heads", "methods", "metrics", "errors", "memory", "forward_mode",
        "distributed", "__init__"],
    1: ["config", "protocol", "data", "models", "optim", "trainer", "checkpoints", "timing", "sweeps", "provenance", "cli", "train"],
    2: ["experiments", "bench", "gpu_check"],
    3: ["curvature", "reduction", "forward_gradients", "experiments.reduction_mappings",
        "experiments.forward_gradients"],
    4: ["gradient_checks", "manifold_checks", "paper_appendix", "explorer", "plotting", "notebooks",
        "explorer_html", "experiments.explorer_grid"],
}
# One concept per module; these pass 800 lines and say why in their docstring.
LONG_OK = {"reduction", "trainer", "experiments.reproduce", "data", "explorer"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
        yield ".".join(parts), path


def _layer(name: str) -> int:
    best, layer = "", None
    for k, names in LAYERS.items():
        for n in names:
            if (name == n or name.startswith(n + ".")) and len(n) > len(best):
                best, layer = n, k
    assert layer is not None, f"module {name} has no layer in tests/test_architecture.py"
    return layer


def _imports(name: str, path: Path):
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                yield (target or "__init__"), alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("guiding_nc."):
            for alias in node.names:
                yield node.module[len("guiding_nc."):], alias.name


def test_no_module_imports_from_a_lower_layer():
    bad = []
    for name, path in _modules():
        here = _layer(name)
        for target, _ in _imports(name, path):
            if target == "__init__" or target == "":
                continue
            if _layer(target) > here:
                bad.append(f"{name} (layer {here}) imports {target} (layer {_layer(target)})")
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = [f"{name} imports {alias} from {target}" for name, path in _modules()
           for target, alias in _imports(name, path)
           if alias.startswith("_") and not alias.startswith("__") and target.split(".")[0] != name.split(".")[0]]
    assert not bad, "\n".join(bad)


def test_modules_stay_small_enough_to_live_in():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules()}
    over = {n: k for n, k in long.items() if k > 800 and n not in LONG_OK}
    assert not over, over
    for n in LONG_OK & set(long):
        if long[n] > 800:
            doc = ast.get_docstring(ast.parse((PKG / (n.replace(".", "/") + ".py")).read_text())) or ""
            assert "one concept" in doc.lower(), f"{n} passes 800 lines without saying why in its docstring"
