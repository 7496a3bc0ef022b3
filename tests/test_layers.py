"""The layers point one way (docs/architecture.md), and the light modules stay light."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fedsim"

# layer -> the fedsim modules it must never import (at the top of a file or inside a function)
FORBIDDEN = {
    "core": ("fedsim.algorithms", "fedsim.engine", "fedsim.data", "fedsim.models", "fedsim.config",
             "fedsim.experiment", "fedsim.commands", "fedsim.cli", "fedsim.compare", "fedsim.metrics"),
    "algorithms": ("fedsim.engine", "fedsim.data", "fedsim.models", "fedsim.config", "fedsim.experiment",
                   "fedsim.commands", "fedsim.cli", "fedsim.compare", "fedsim.metrics"),
    "engine": ("fedsim.algorithms", "fedsim.config", "fedsim.experiment", "fedsim.commands", "fedsim.cli",
               "fedsim.compare", "fedsim.data", "fedsim.models"),
    "data": ("fedsim.algorithms", "fedsim.engine", "fedsim.experiment", "fedsim.commands", "fedsim.cli",
             "fedsim.models"),
    "models": ("fedsim.algorithms", "fedsim.engine", "fedsim.experiment", "fedsim.commands", "fedsim.cli",
               "fedsim.data"),
}
# privacy, robust aggregation and communication are the channel's reducers and stages (fedsim.core.channel):
# core's types only, and none of the others
FORBIDDEN["privacy"] = FORBIDDEN["robust"] = FORBIDDEN["comm"] = FORBIDDEN["algorithms"] + ("fedsim.algorithms",)
for layer in ("privacy", "robust", "comm"):
    FORBIDDEN[layer] += tuple(f"fedsim.{o}" for o in ("privacy", "robust", "comm") if o != layer)


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_layers_point_one_way():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in imported_modules(path):
                if name == "fedsim" or any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_in_the_library_imports_the_cli():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "cli.py" or "commands" in path.parts or path.name == "__main__.py":
            continue
        names = imported_modules(path)
        assert not {n for n in names if n.startswith(("fedsim.cli", "fedsim.commands"))}, path


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; print(' '.join(sys.modules))"],
                         check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_algorithms_import_neither_torch_nor_executors():
    loaded = loaded_after("import fedsim.algorithms as a; [a.algorithm_class(n) for n in a.ALGORITHMS]; "
                          "a.algorithm_options()")
    assert not {"torch", "numpy", "fedsim.engine.local", "fedsim.engine.vmap"} & loaded
    assert not {m for m in loaded if m.startswith("fedsim.engine")}


def test_the_cli_loads_no_heavy_library_before_a_command_runs():
    loaded = loaded_after("import fedsim.cli, fedsim.config")
    assert not {"torch", "numpy", "pandas", "matplotlib", "sklearn"} & loaded
