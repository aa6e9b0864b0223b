"""The package's layers import downwards only: core ← data, model ← methods ← report ← cli."""

from iclscope.core import jobs

LAYER = {"core": 0, "data": 1, "model": 1, "methods": 2, "report": 3, "cli": 4, "__init__": 4}


def _imports() -> list[tuple[str, str, str]]:
    """(file, its layer, imported module's layer) for every package-internal import."""
    out = []
    for path in sorted(jobs.PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(jobs.PACKAGE_DIR)
        layer = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for module in jobs._parsed(path)[1]:
            if module:
                out.append((str(rel), layer, module.split(".")[0]))
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
