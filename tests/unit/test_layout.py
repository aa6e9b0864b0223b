"""The package's layers import downwards only: core ← data, model ← methods ← report ← cli."""

import ast
from pathlib import Path

from iclscope.core import jobs

LAYER = {"core": 0, "data": 1, "model": 1, "methods": 2, "report": 3, "cli": 4, "__init__": 4}


def _layer_of(module: str) -> str:
    """The layer of package module `module` ("core.stats"); the package itself ("", or a name of its
    __init__ such as __version__) is the top layer "__init__"."""
    head = module.split(".")[0]
    is_module = head and ((jobs.PACKAGE_DIR / head).is_dir() or (jobs.PACKAGE_DIR / f"{head}.py").is_file())
    return head if is_module else "__init__"


def _imports() -> list[tuple[str, str, str]]:
    """(file, its layer, imported module's layer) for every import statement of the package naming the
    package, every module included: `from iclscope import x` is an import of the top layer."""
    out = []
    for path in sorted(jobs.PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(jobs.PACKAGE_DIR)
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        tree = ast.parse(path.read_text(), filename=str(path))
        named = jobs._imported(path, tree)
        # `from iclscope.core import stats` names "core" and "core.stats": the deepest names say it all
        for module in {m for m in named if not any(o.startswith(m + ".") for o in named if o != m)} or named:
            out.append((str(rel), layer, _layer_of(module)))
    return out


def test_every_module_lives_in_a_layer():
    assert {layer for _, layer, _ in _imports()} | {target for *_, target in _imports()} <= set(LAYER)


def test_no_module_imports_from_a_layer_above_or_beside_its_own():
    upward = [(f, target) for f, layer, target in _imports() if layer != target and LAYER[target] >= LAYER[layer]]
    assert upward == []


def test_the_digest_sees_the_layers_a_method_stands_on():
    """A method's script runs core and model code: both are in its code digest."""
    modules = jobs.package_modules(jobs.PACKAGE_DIR.parent / "scripts" / "icicl.py")
    assert {"methods.taskspace.icicl", "model.capture", "core.tables"} <= set(modules)


def test_every_module_is_checked_and_the_top_package_counts_as_the_top_layer():
    """No file is left out: each package file is in the walk, and an import of the package itself
    (`from iclscope import __version__` in model/extract.py was one) is an import from the top layer."""
    files = {f for f, _, _ in _imports()}
    every = {str(p.relative_to(jobs.PACKAGE_DIR)) for p in jobs.PACKAGE_DIR.rglob("*.py")}
    importing = {
        str(p.relative_to(jobs.PACKAGE_DIR))
        for p in jobs.PACKAGE_DIR.rglob("*.py")
        if jobs._imported(p, ast.parse(p.read_text()))
    }
    assert importing <= files <= every and "model/extract.py" in files
    assert _layer_of("") == _layer_of("__version__") == "__init__" and _layer_of("core.stats") == "core"


def test_the_metric_table_shape_is_no_part_of_a_model_stage():
    """core.metrics (the long format of metric tables) is run by metric stages, not by extraction:
    adding a column reruns no model stage's product."""
    scripts = jobs.PACKAGE_DIR.parent / "scripts"
    for stage in ("extract", "token_states", "extract_anchors", "build_prompts", "prepare_dataset"):
        assert "core.metrics" not in jobs.package_modules(scripts / f"{stage}.py"), stage
    assert "core.metrics" in jobs.package_modules(scripts / "compression.py")


def test_the_figures_and_the_atlas_run_no_method_code():
    """Methods compute their tables; report/plots.py and report/atlas.py only read tables and draw."""
    for module in ("report.plots", "report.atlas"):
        ran = jobs.package_modules(jobs.PACKAGE_DIR / Path(*module.split(".")).with_suffix(".py"))
        assert [m for m in ran if m.startswith("methods")] == [], module
