"""Internal imports sit at the module's top, unless torch's import cost is the reason (issue 28, 1).

    .venv/bin/python -m pytest -q tests/test_import_rule.py

A module's top says what it depends on. An ``import pipeline_src...`` / ``from pipeline_src... import ...`` inside
a function hides a dependency there, so it is allowed only where the imported module is *heavy*: importing it
loads one of ``HEAVY`` (torch and the packages that import it, matplotlib, dvclive), itself or through the
module-level imports of other pipeline_src modules. Deferring such an import keeps the torch-free stages,
``medref --help`` and the model-free readers from paying for it (tests/test_lazy_imports.py checks the result at
run time).

"Heavy" is computed statically, nothing is imported: each module's module-level imports (those in its body, in a
module-level ``if``/``try``/``with`` or class body; not those in a function, nor under ``if TYPE_CHECKING:``,
which never runs; an import in ``try: ... except ImportError:`` is attempted, so it counts), closed over
pipeline_src's own module graph. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so a
package's module-level imports count for each module under it.

The other half of the rule: a heavy in-function import must defer a heavy package that the importing module's top
does not already load; otherwise import cost is not the reason and it belongs at the top too.

Files that keep light in-function imports for another reason are in ``EXEMPT``, each with its reason (an entry
that no longer has one fails ``test_exemptions_are_still_needed``). No entry is for an import cycle: the graph of
tests/test_deps.py counts in-function imports as edges and holds no cycle, so moving one to the top makes none.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from tests.test_deps import module_file  # the one resolver of a dotted module to its file

REPO = Path(__file__).resolve().parents[1]
PKG = "pipeline_src"
# Third-party packages whose import cost justifies deferring the import of a module that loads them.
HEAVY = frozenset({"torch", "timm", "open_clip", "transformers", "monai", "onnxruntime", "matplotlib", "dvclive"})

# File (or package folder, ending in "/") -> why its light in-function imports stay in their functions.
EXEMPT: dict[str, str] = {
    f"{PKG}/cli.py": (
        "each command function imports its stage (and params, grid, io) only when that command runs, so "
        "`medref --help` and one stage load no other stage (tests/test_lazy_imports.py, the <=0.3 s --help goal; "
        "measured: those imports at cli's top take --help from 0.12 s to about 0.6 s, loading pydantic, numpy, "
        "pyarrow, PIL and submitit), and a stage's code deps in dvc.yaml follow from its handler's imports "
        "(tests/test_deps.py). The free ones (errors, numerics) are at its top"
    ),
}


@dataclass(frozen=True)
class Import:
    file: str  # importing file, repo-relative
    line: int
    module: str  # imported pipeline_src module, dotted

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.module}"


def dotted_of(rel: str) -> str:
    parts = Path(rel).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(node: ast.Import | ast.ImportFrom, rel: str, is_module) -> list[str]:
    """The dotted modules an import statement loads: internal ones resolved to the module itself (``from
    pipeline_src.x import y`` loads ``pipeline_src.x.y`` where that is a module, else ``pipeline_src.x``),
    third-party ones as given."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the importing module's package
        pkg = dotted_of(rel).split(".")
        if not rel.endswith("__init__.py"):
            pkg = pkg[:-1]
        pkg = pkg[: len(pkg) - node.level + 1]
        mod = ".".join([*pkg, node.module] if node.module else pkg)
    else:
        mod = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{mod}.{alias.name}"
        out.append(sub if is_module(sub) else mod)
    return out


def split_imports(tree: ast.Module) -> tuple[list[ast.Import | ast.ImportFrom], list[ast.Import | ast.ImportFrom]]:
    """(imports that run when the module is imported, imports inside a function body)."""
    top: list = []
    inner: list = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (inner if in_function else top).append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not in_function:
            for child in node.orelse:  # the body never runs
                visit(child, in_function)
            return
        nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(tree, False)
    return top, inner


@dataclass
class Package:
    """pipeline_src read statically: per module, what its import loads and what its functions import."""

    top: dict[str, set[str]]  # dotted module -> modules its module-level imports load (with parent packages)
    inner: list[Import]  # in-function imports of internal modules

    @classmethod
    def read(cls, sources: dict[str, str], root: Path = REPO) -> Package:
        """``sources``: repo-relative path -> source text of every pipeline_src module."""
        by_dotted = {dotted_of(rel): rel for rel in sources}

        def is_module(dotted: str) -> bool:
            return dotted in by_dotted or module_file(dotted, root) is not None

        top: dict[str, set[str]] = {}
        inner: list[Import] = []
        for rel, text in sorted(sources.items()):
            mod_top, mod_inner = split_imports(ast.parse(text, filename=rel))
            loads: set[str] = set()
            for node in mod_top:
                for name in imported_names(node, rel, is_module):
                    parts = name.split(".")
                    loads |= {".".join(parts[: i + 1]) for i in range(len(parts))}  # a.b.c runs a, a.b first
            top[dotted_of(rel)] = loads
            for node in mod_inner:
                for name in dict.fromkeys(imported_names(node, rel, is_module)):  # once per module a statement loads
                    if name.split(".")[0] == PKG:
                        inner.append(Import(rel, node.lineno, name))
        return cls(top, inner)

    def heavy(self, module: str) -> list[str]:
        """The import chain by which importing ``module`` loads a HEAVY package (``[module, ..., "torch"]``);
        empty when it loads none."""
        parts = module.split(".")
        start = [".".join(parts[: i + 1]) for i in range(len(parts))]  # its parent packages run first
        seen: set[str] = set()
        todo: list[list[str]] = [[m] for m in start]
        while todo:  # breadth first: the shortest chain
            chain = todo.pop(0)
            m = chain[-1]
            if m in seen:
                continue
            seen.add(m)
            if m.split(".")[0] in HEAVY:
                return chain
            for dep in sorted(self.top.get(m, ())):
                if dep.split(".")[0] in HEAVY or dep.split(".")[0] == PKG:
                    todo.append([*chain, dep])
        return []


    def heavy_set(self, module: str) -> set[str]:
        """Every HEAVY package that importing ``module`` loads."""
        out: set[str] = set()
        todo = [".".join(module.split(".")[: i + 1]) for i in range(len(module.split(".")))]
        seen: set[str] = set()
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            if m.split(".")[0] in HEAVY:
                out.add(m.split(".")[0])
            elif m.split(".")[0] == PKG:
                todo += self.top.get(m, ())
        return out


def exemption_of(rel: str, exempt: dict[str, str]) -> str | None:
    for key in exempt:
        if rel == key or (key.endswith("/") and rel.startswith(key)):
            return key
    return None


def violations(pkg: Package, exempt: dict[str, str]) -> list[str]:
    """One line per in-function import of a light internal module outside the exempt files."""
    return [f"{imp}: in-function import of a module that loads none of {', '.join(sorted(HEAVY))}; move it to "
            f"the module's top" for imp in pkg.inner if not pkg.heavy(imp.module) and not exemption_of(imp.file, exempt)]


def needless_deferrals(pkg: Package) -> list[str]:
    """One line per in-function import of a heavy module that defers no heavy package: the importing module's own
    top already loads every one the imported module does, so import cost is not the reason."""
    out = []
    for imp in pkg.inner:
        wanted = pkg.heavy_set(imp.module)
        if wanted and not wanted - pkg.heavy_set(dotted_of(imp.file)):
            out.append(f"{imp}: in-function import of a heavy module, but {imp.file} already loads "
                       f"{', '.join(sorted(wanted))} at its top; move it there")
    return out


def sources(root: Path = REPO) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted((root / PKG).rglob("*.py"))}


def test_internal_imports_are_at_the_top_unless_heavy():
    problems = violations(Package.read(sources()), EXEMPT)
    assert not problems, "light internal imports inside functions:\n" + "\n".join(problems)


def test_heavy_in_function_imports_defer_a_heavy_package():
    """The other half of the rule: a heavy import inside a function must save its caller a heavy package."""
    problems = needless_deferrals(Package.read(sources()))
    assert not problems, "in-function imports that torch's import cost does not explain:\n" + "\n".join(problems)


def test_exemptions_are_still_needed():
    pkg = Package.read(sources())
    files = set(sources())
    for key in EXEMPT:
        assert key in files or (key.endswith("/") and any(f.startswith(key) for f in files)), f"{key}: no such file"
        light = [imp for imp in pkg.inner if exemption_of(imp.file, {key: ""}) and not pkg.heavy(imp.module)]
        assert light, f"EXEMPT names {key}, which has no light in-function import left; drop the entry"


def test_a_light_in_function_import_is_reported():
    """The checker can fail: a light in-function import is reported, a heavy one (directly or through another
    module's top), one at the top and one under TYPE_CHECKING are not; an exempt file is skipped. A heavy one in a
    module whose top already loads that package is reported by the second rule."""
    src = {
        f"{PKG}/__init__.py": "",
        f"{PKG}/light.py": "import json\nif TYPE_CHECKING:\n    import torch\n",
        f"{PKG}/heavy.py": "try:\n    import monai\nexcept ImportError:\n    monai = None\n",
        f"{PKG}/via.py": "from pipeline_src import heavy\n",
        f"{PKG}/user.py": ("from pipeline_src import light\n\n"
                           "def f():\n    from pipeline_src.light import x\n    import pipeline_src.via\n"
                           "    from pipeline_src import heavy\n    return x\n"),
    }
    pkg = Package.read(src, root=REPO / "nonexistent")
    assert pkg.heavy(f"{PKG}.via") == [f"{PKG}.via", f"{PKG}.heavy", "monai"]
    assert pkg.heavy(f"{PKG}.light") == []
    got = violations(pkg, {})
    assert got and len(got) == 1 and got[0].startswith(f"{PKG}/user.py:4: {PKG}.light:"), got
    assert violations(pkg, {f"{PKG}/user.py": "test"}) == []
    assert needless_deferrals(pkg) == []  # user.py loads no heavy package at its top: deferring monai saves it
    src[f"{PKG}/user.py"] = "import torch\n" + src[f"{PKG}/user.py"]  # now its top loads torch itself
    src[f"{PKG}/heavy.py"] = src[f"{PKG}/heavy.py"].replace("monai", "torch")
    got = needless_deferrals(Package.read(src, root=REPO / "nonexistent"))
    assert len(got) == 2 and all(g.startswith(f"{PKG}/user.py:") for g in got), got  # via (line 6), heavy (7)


def test_the_real_package_has_heavy_modules():
    """Guard against a checker that finds nothing heavy (e.g. a broken parse): the model code loads torch."""
    pkg = Package.read(sources())
    assert pkg.heavy(f"{PKG}.models.segmodel")[-1] in HEAVY
    assert not pkg.heavy(f"{PKG}.paths")
