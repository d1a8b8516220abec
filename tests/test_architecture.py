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


# ---- the module import graph ------------------------------------------------------------------------------
def _module_names():
    """{module name: path} of every module of the package (``aaclip.<layer>...``, packages by their __init__)."""
    names = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = list(path.relative_to(ROOT / layer).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names[".".join(["aaclip", layer, *parts])] = path
    return names


def import_graph():
    """{module: {modules it imports}} over the whole package, every import counted: module level, inside
    functions (lazy) and under ``if TYPE_CHECKING`` alike, relative ones resolved. ``from P import n`` is an
    edge to ``P.n`` when that is a module, else to ``P``; importing a module's parent package on the way
    (what Python does first) is not an edge of its own."""
    names = _module_names()

    def known(name):
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in names.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names if a.name.startswith("aaclip."))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if not base.startswith("aaclip"):
                    continue
                for a in node.names:
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in names else known(base))
        targets.discard(None)
        targets.discard(module)
        graph[module] = targets
    return graph


def import_cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_between_modules():
    """A lazy import inside a function still ties two modules together (each needs the other to work), so
    it counts: a cycle means two modules that are one concept, or a lower one that reaches up."""
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_lazy_import_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


# Inside train/, dependencies point down these levels: shared pieces, the family interface and registry,
# the families (each its own folder, never another's), the package that registers them all, the commands'
# building blocks (checkpoint loading, evaluation), the commands.
TRAIN_LEVELS = (("aaclip.train.common", 0), ("aaclip.train.families.base", 1), ("aaclip.train.families.registry", 1),
                ("aaclip.train.families.", 2), ("aaclip.train.families", 3), ("aaclip.train.checkpoint", 4),
                ("aaclip.train.evaluate", 4), ("aaclip.train.cli_common", 4), ("aaclip.train.eval_cli", 5),
                ("aaclip.train.train_cli", 5), ("aaclip.train", 6))


def train_level(module):
    for prefix, level in TRAIN_LEVELS:
        if module == prefix.rstrip(".") and not prefix.endswith(".") or module.startswith(
                prefix if prefix.endswith(".") else prefix + ".") or module == prefix:
            return level
    return None


def family_of(module):
    parts = module.split(".")
    return parts[3] if len(parts) > 4 and parts[:3] == ["aaclip", "train", "families"] else None


def test_train_imports_point_down_its_levels():
    bad = []
    for module, targets in import_graph().items():
        if train_level(module) is None:
            continue
        for target in sorted(targets):
            if train_level(target) is None:
                continue
            if train_level(target) > train_level(module):
                bad.append(f"{module} (level {train_level(module)}) imports {target} (level {train_level(target)})")
            elif family_of(module) and family_of(target) and family_of(module) != family_of(target):
                bad.append(f"{module} imports another family's {target}")
    assert not bad, "\n".join(bad)


def test_train_levels_cover_every_train_module():
    assert [m for m in _module_names() if m.startswith("aaclip.train") and train_level(m) is None] == []
    assert train_level("aaclip.train.families.clip_ad.model") == 2 and train_level("aaclip.train.families") == 3
    assert train_level("aaclip.train.common.maps") == 0 and train_level("aaclip.train.families.registry") == 1


def test_calibration_never_imports_train():
    """Calibration runs on a bare Jetson: the data layer gives it records and synthetic frames, not train."""
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if m.startswith("aaclip.calibration")
           for t in targets if t.startswith("aaclip.train")]
    assert not bad, "\n".join(bad)


def test_data_layer_imports_without_torch(tmp_path):
    """aaclip.data needs numpy, OpenCV and click only: with torch blocked, every data module imports and
    aaclip-data writes a synthetic dataset, and nothing outside the standard library, numpy, cv2, click and
    aaclip was loaded."""
    import subprocess
    import sys

    modules = sorted(m for m in _module_names() if m.startswith("aaclip.data"))
    code = ("import sys\n"
            "for name in ('torch', 'open_clip', 'torchvision', 'sklearn', 'scipy', 'PIL'):\n"
            "    sys.modules[name] = None\n"
            f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            "from aaclip.data.cli import main\n"
            "try:\n"
            f"    main(['synth', {str(tmp_path / 'synth')!r}, '--size', '32', '--classes', 'disk',"
            " '--train-normal', '1', '--train-anomalous', '1', '--test-normal', '1', '--test-anomalous', '1'])\n"
            "except SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "allowed = set(sys.stdlib_module_names) | {'numpy', 'cv2', 'click', 'aaclip', 'cython_runtime'}\n"
            "loaded = {n.split('.')[0] for n, m in sys.modules.items() if m is not None}\n"
            "print('LOADED:' + ','.join(sorted(n for n in loaded - allowed if not n.startswith('_'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "LOADED:", f"aaclip.data loaded: {done.stdout.strip()}"
    assert (tmp_path / "synth" / "train.jsonl").is_file()


def test_every_package_has_its_row_in_docs_architecture():
    """docs/architecture.md's folder tables name every package of setup.cfg (a new folder is documented)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    packages = cfg["options"]["packages"].split()
    package_dir = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for package in packages:
        top = ".".join(package.split(".")[:2])
        folder = "/".join([package_dir[top], *package.split(".")[2:]])
        if f"`{folder}/`" not in doc and f"`{folder.split('/', 1)[-1]}/`" not in doc:
            missing.append(f"{package} ({folder}/)")
    assert not missing, "docs/architecture.md does not name: " + ", ".join(missing)
    assert set(package_dir) == {".".join(p.split(".")[:2]) for p in packages}
