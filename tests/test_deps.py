"""Code dependencies: every stage's imports are tracked deps, and imports run one way.

    .venv/bin/python -m pytest -q tests/test_deps.py

Both tests read the package statically (``ast``; nothing is imported, so torch never loads).

1. ``test_stage_code_deps_cover_imports``: a stage's import closure starts at its ``medref``
   sub-command handler in ``pipeline_src/cli.py`` (the imports inside the handler and the
   cli-level helpers it calls, plus cli's module-level imports) and follows every
   ``import pipeline_src...`` / ``from pipeline_src... import ...``, at module level or inside a
   function, and every lazy ``"pipeline_src.x.y:function"`` string constant (the architecture
   registry, the launcher's train target). Each module of the closure must lie in a code dep
   (file or folder) of the stage in dvc.yaml and in an input of its Snakemake rule; otherwise a
   code edit would leave the stage up to date while its output no longer matches the code.
   ``cli.py`` itself is the dispatcher shared by every stage and is not a dep: what it decides
   for a stage (default paths) lives in ``paths.py``, which is. A package ``__init__.py``
   that runs on import counts (``models/__init__.py`` holds the registry); one holding only a
   docstring and dunder constants does not.

2. ``test_imports_follow_phase_order``: data -> labels -> models -> train -> inference ->
   evaluate -> aggregate (study, report: from eval's outputs, no model), every phase above the
   shared base (``errors``, ``paths``, ``provenance``, ``utils``, the package ``__init__``),
   ``cli.py``, ``verify.py``, ``launcher.py`` and ``grid.py`` on top, and no import cycle between
   modules. Each phase keeps the model of its own params section in
   ``<phase>/params.py``: the schema of a key sits next to the code that reads it, and a phase
   param model imports only the base and other params models, so it is a leaf (what every stage
   imports through params.py stays small, and one package of all models would either import
   every phase or need the phases to import it upward). ``pipeline_src/params.py``
   composes them: it may import every phase's ``params.py`` and nothing else of the phases.
   Only the top layer imports it: configuration flows down, each stage receives its params
   from the CLI (the composed ``Params`` or a section of it). Exceptions go into ``ALLOWED``
   with the reason; it is empty.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_engines import dvc_stages, snakemake_jobs

REPO = Path(__file__).resolve().parents[1]
PKG = "pipeline_src"
# A lazy import by name, resolved with importlib at run time ("module:function").
LAZY_REF = re.compile(rf"({PKG}(?:\.\w+)+):\w+")

# Stage (dvc.yaml stage / Snakemake rule) -> its handler in pipeline_src/cli.py.
STAGE_ENTRY = {
    "download": "cmd_download",
    "preprocess": "cmd_preprocess",
    "pseudolabel": "cmd_pseudolabel",
    "pretrain_text": "cmd_pretrain_text",
    "split": "cmd_split",
    "train": "cmd_train",
    "eval": "cmd_eval",
    "study": "cmd_study",
    "report": "cmd_report",
}

BASE = {f"{PKG}/__init__.py", f"{PKG}/numerics.py", f"{PKG}/errors.py", f"{PKG}/paths.py", f"{PKG}/provenance.py"}
COMPOSER = f"{PKG}/params.py"
TOP = {f"{PKG}/cli.py", f"{PKG}/verify.py", f"{PKG}/launcher.py", f"{PKG}/grid.py"}
# Which phases each phase may import (besides itself and the base). No phase imports the params composer: the top
# layer (cli.py, verify.py, launcher.py, grid.py) loads the params and hands each stage its typed sections.
PHASE_MAY_IMPORT = {
    "data": set(),
    "labels": {"data"},
    "models": {"data", "labels"},
    "train": {"data", "labels", "models"},
    "inference": {"data", "labels", "models"},
    "evaluate": {"data", "labels", "models", "inference"},
    # study and report: across runs, from eval's outputs; they never load a model (models/: only the model folder's
    # torch-free reader, for the DVCLive log)
    "aggregate": {"evaluate", "models"},
}
# (importer, imported) pairs accepted against the rules above, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    src: str  # importing file, relative to the repo
    line: int
    dst: str  # imported file, relative to the repo

    def __str__(self) -> str:
        return f"{self.src}:{self.line}: {self.src} -> {self.dst}"


def module_file(dotted: str, root: Path = REPO) -> str | None:
    """The repo-relative file of a ``pipeline_src`` module or package, None if there is none."""
    base = Path(*dotted.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / cand).is_file():
            return cand.as_posix()
    return None


def _package_of(rel: str) -> str:
    parts = Path(rel).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts[:-1])


def imports_in(nodes: list[ast.AST], src: str, root: Path = REPO) -> list[Edge]:
    """Every ``pipeline_src`` module the given AST nodes import (walked, so nested imports count)."""
    edges = []

    def add(dotted: str, line: int) -> None:
        f = module_file(dotted, root)
        if f is not None:
            edges.append(Edge(src, line, f))

    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PKG:
                        add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = _package_of(src).split(".")
                    pkg = pkg[: len(pkg) - node.level + 1]
                    mod = ".".join([*pkg, node.module] if node.module else pkg)
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != PKG:
                    continue
                for alias in node.names:  # `from pkg import module` imports the module itself
                    if module_file(f"{mod}.{alias.name}", root):
                        add(f"{mod}.{alias.name}", node.lineno)
                    else:
                        add(mod, node.lineno)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = LAZY_REF.fullmatch(node.value)
                if m:
                    add(m.group(1), node.lineno)
    return edges


def parse(rel: str, root: Path = REPO) -> ast.Module:
    return ast.parse((root / rel).read_text(), filename=rel)


def import_graph(root: Path = REPO) -> dict[str, list[Edge]]:
    return {
        rel: imports_in([parse(rel, root)], rel, root)
        for rel in sorted(p.relative_to(root).as_posix() for p in (root / PKG).rglob("*.py"))
    }


def runs_code(init: str, root: Path = REPO) -> bool:
    """Whether importing a package ``__init__.py`` runs more than a docstring and dunder constants."""
    for stmt in parse(init, root).body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        if isinstance(stmt, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id.startswith("__") for t in stmt.targets
        ):
            continue
        return True
    return False


def entry_edges(handler: str, root: Path = REPO) -> list[Edge]:
    """Imports made by a cli handler: its own, those of the cli-level helpers it calls, and cli's
    module-level ones."""
    cli = f"{PKG}/cli.py"
    tree = parse(cli, root)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert handler in funcs, f"{cli} has no handler {handler}()"
    seen, todo = set(), [handler]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(funcs[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in funcs:
                todo.append(node.func.id)
    module_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return imports_in([*module_level, *(funcs[n] for n in sorted(seen))], cli, root)


def closure(handler: str, root: Path = REPO) -> dict[str, Edge]:
    """Each module the stage imports -> the first import edge that reaches it."""
    graph = import_graph(root)
    reached: dict[str, Edge] = {}
    todo = entry_edges(handler, root)
    while todo:
        e = todo.pop(0)
        if e.dst in reached:
            continue
        reached[e.dst] = e
        todo += graph[e.dst]
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    for f, e in list(reached.items()):
        for parent in Path(f).parents:
            init = (parent / "__init__.py").as_posix()
            if parent.parts and (root / init).is_file() and init not in reached and runs_code(init, root):
                reached[init] = e
    return reached


def covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


def code_deps(deps: set[str]) -> set[str]:
    return {d.rstrip("/") for d in deps if covers(PKG, d)}


def missing_deps(closures: dict[str, dict[str, Edge]], engines: dict[str, dict[str, set[str]]]) -> list[str]:
    """One line per (stage, module) that an engine does not track."""
    problems = []
    for stage, reached in closures.items():
        for mod, via in sorted(reached.items()):
            lacking = [name for name, deps in engines.items() if not any(covers(d, mod) for d in deps[stage])]
            if lacking:
                problems.append(f"stage {stage}: {mod} (imported at {via.src}:{via.line}) is not a dep in "
                                f"{' nor '.join(lacking)}")
    return problems


def engine_code_deps() -> dict[str, dict[str, set[str]]]:
    """Per engine, per stage: the code deps (union over the stage's foreach items / wildcards)."""
    out: dict[str, dict[str, set[str]]] = {"dvc.yaml": defaultdict(set), "the Snakemake rule": defaultdict(set)}
    for name, st in dvc_stages().items():
        out["dvc.yaml"][name.split("@")[0]] |= code_deps(st["deps"])
    for name, job in snakemake_jobs().items():
        out["the Snakemake rule"][name.split("@")[0]] |= code_deps(job["deps"])
    return out


@pytest.fixture(scope="module")
def engines():
    return engine_code_deps()


def test_every_stage_has_an_entry(engines):
    assert set(engines["dvc.yaml"]) == set(STAGE_ENTRY)


def test_stage_code_deps_cover_imports(engines):
    closures = {stage: closure(handler) for stage, handler in STAGE_ENTRY.items()}
    problems = missing_deps(closures, engines)
    assert not problems, "code a stage imports but does not depend on:\n" + "\n".join(problems)


def test_engines_list_the_same_code_deps(engines):
    dvc, smk = engines["dvc.yaml"], engines["the Snakemake rule"]
    diff = {s: (dvc[s] - smk[s], smk[s] - dvc[s]) for s in STAGE_ENTRY if dvc[s] != smk[s]}
    assert not diff, "\n".join(f"{s}: only in dvc.yaml {a}, only in Snakemake {b}" for s, (a, b) in diff.items())


def phase_of(rel: str) -> str:
    """``base``, ``composer``, ``top``, or the phase package a module belongs to."""
    if rel in BASE or rel.startswith(f"{PKG}/utils/"):
        return "base"
    if rel == COMPOSER:
        return "composer"
    if rel in TOP:
        return "top"
    parts = Path(rel).parts
    assert len(parts) >= 3 and parts[1] in PHASE_MAY_IMPORT, f"{rel}: in no phase; add it to a phase or the base"
    return parts[1]


def is_phase_params(rel: str) -> bool:
    return Path(rel).name == "params.py" and phase_of(rel) in PHASE_MAY_IMPORT


def edge_violation(e: Edge) -> str | None:
    """Why an import breaks the phase order, or None."""
    src, dst = phase_of(e.src), phase_of(e.dst)
    if src == "top" or dst == "base":
        return None
    if src == "base":
        return "the base (errors, paths, provenance, utils) imports nothing above it"
    if src == "composer":
        if is_phase_params(e.dst):
            return None
        return "params.py composes the phases' params.py models and imports nothing else of them"
    if dst == "top":
        return "cli.py, verify.py, launcher.py and grid.py sit on top: only the top imports them"
    if dst == "composer":
        return ("a phase does not import the composed params (pipeline_src/params.py): the top layer loads them and "
                "hands the stage its sections (configuration flows down)")
    if is_phase_params(e.src) and dst == "composer":
        return "a phase's params.py is a leaf that params.py composes; importing the composer back makes a cycle"
    if is_phase_params(e.src) and not is_phase_params(e.dst):
        return "a phase's params.py is a leaf: it may import the base and other params models only"
    if dst == src or dst in PHASE_MAY_IMPORT[src]:
        return None
    return f"{src} may import only {', '.join(sorted(PHASE_MAY_IMPORT[src] | {'the base'}))}, not {dst}"


def cycles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            if e.dst not in index:
                visit(e.dst)
                low[v] = min(low[v], low[e.dst])
            elif e.dst in on_stack:
                low[v] = min(low[v], index[e.dst])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def phase_order_violations(root: Path = REPO) -> list[str]:
    graph = import_graph(root)
    problems = []
    for edges in graph.values():
        for e in edges:
            why = edge_violation(e)
            if why and (e.src, e.dst) not in ALLOWED:
                problems.append(f"{e}: {why}")
    for comp in cycles(graph):
        members = set(comp)
        for e in sorted({e for m in comp for e in graph[m] if e.dst in members}, key=str):
            if (e.src, e.dst) not in ALLOWED:
                problems.append(f"{e}: import cycle between {', '.join(comp)}")
    return sorted(set(problems))


def test_imports_follow_phase_order():
    problems = phase_order_violations()
    assert not problems, "imports against the phase order:\n" + "\n".join(problems)


def test_allowed_exceptions_are_still_needed():
    graph = import_graph()
    present = {(e.src, e.dst) for edges in graph.values() for e in edges}
    assert not set(ALLOWED) - present, "ALLOWED names imports that no longer exist"


def test_a_phase_importing_the_composed_params_is_refused():
    """Configuration flows down: a phase that reads the composed params itself breaks the rule; the top layer may."""
    for phase_module in ("pipeline_src/inference/predict.py", "pipeline_src/train/train.py",
                         "pipeline_src/labels/regions_cli.py"):
        why = edge_violation(Edge(phase_module, 1, COMPOSER))
        assert why and "configuration flows down" in why, phase_module
    for top in sorted(TOP):
        assert edge_violation(Edge(top, 1, COMPOSER)) is None, top
    # the composer's own leaves stay importable by every phase's params.py
    assert edge_violation(Edge("pipeline_src/evaluate/params.py", 1, "pipeline_src/inference/params.py")) is None
