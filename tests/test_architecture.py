"""The layout keeps docs/architecture.md true: who may import whom, and small function signatures."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("contract", "data", "runtime", "serve", "train", "export", "calibration", "benchmarks", "demo")
MAY_IMPORT = {  # aaclip packages each layer may import (besides itself)
    "contract": set(),
    "data": {"contract"},
    "runtime": {"contract"},
    "serve": {"contract", "runtime"},
    "train": {"contract", "data", "runtime"},
    "export": {"contract", "data", "runtime", "train"},
    "calibration": {"contract", "data", "runtime", "export"},
    "benchmarks": {"contract", "data", "runtime", "serve", "train", "export", "calibration"},
    "demo": {"contract", "data", "runtime", "train", "export", "calibration"},
}
# contract: at module level (a lazy import inside a function is fine: scikit-learn for the metrics)
TOP_LEVEL_FORBIDDEN = {"contract": {"torch", "open_clip", "torchvision", "onnx", "onnxruntime", "tensorrt", "sklearn",
                                    "scipy"}}
FORBIDDEN = {"runtime": {"torch", "open_clip", "torchvision"}, "serve": {"torch", "open_clip", "torchvision"},
             "data": {"torch", "open_clip", "torchvision"}}
MAX_PARAMETERS = 8


def _modules(layer):
    for path in sorted((ROOT / layer).rglob("*.py")):
        yield path, ast.parse(path.read_text())


def _imports(tree, top_level_only=False):
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from (f"{node.module}.{a.name}" for a in node.names)


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_what_they_may(layer):
    bad = []
    for path, tree in _modules(layer):
        top = set(_imports(tree, top_level_only=True))
        for module in _imports(tree):
            root = module.split(".")[0]
            if root in FORBIDDEN.get(layer, ()) or (module in top and root in TOP_LEVEL_FORBIDDEN.get(layer, ())):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
            if module.startswith("aaclip."):
                target = module.split(".")[1]
                if target == layer or target in MAY_IMPORT[layer]:
                    continue
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_function_takes_more_than_eight_parameters():
    """Click commands excepted (one parameter per option); everything else takes an options object."""
    bad = []
    for layer in LAYERS:
        for path, tree in _modules(layer):
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if any("command" in ast.unparse(d) or "click" in ast.unparse(d) for d in node.decorator_list):
                    continue
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                n = len(params) - (1 if params and params[0].arg in ("self", "cls") else 0)
                if n > MAX_PARAMETERS:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() takes {n}")
    assert not bad, "\n".join(bad)
