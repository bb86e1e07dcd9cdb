"""The reference and the error catalogue keep up with the code; the guides print what they say.

How a page's code blocks are treated (with tests/test_docs.py): a ```python block runs as it
is written, but one importing ``myservice``, which belongs to a guide's project and runs there;
a ```py block is illustrative (a fragment, or another framework's code) and is only compiled;
``# prints: ...`` lines say, in order, everything a block prints.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import di_lifespan
from di_lifespan import _errors
from tests.resources import ROOT, run_pytest
from tests.test_docs import DOCS, FENCE, python_blocks, run_block

# Public modules documented by a guide of their own rather than the reference.
GUIDE_ONLY = {"di_lifespan.cli", "di_lifespan.pytest_plugin"}


def public_modules() -> list[ModuleType]:
    """di_lifespan and each public submodule with an ``__all__``, but those with a guide only."""
    names = ["di_lifespan"] + [
        f"di_lifespan.{info.name}"
        for info in pkgutil.iter_modules(di_lifespan.__path__)
        if not info.name.startswith("_")
    ]
    modules = [importlib.import_module(name) for name in names if name not in GUIDE_ONLY]
    return [module for module in modules if hasattr(module, "__all__")]


def documented_objects(page: str) -> set[str]:
    """The dotted paths of every ``::: path`` directive of a page."""
    return set(re.findall(r"^::: ([\w.]+)$", page, re.MULTILINE))


@pytest.mark.parametrize("module", public_modules(), ids=lambda module: module.__name__)
def test_the_reference_covers_every_public_name(module: ModuleType) -> None:
    """Each name in a public module's __all__ has its entry in the API reference.

    An object exported by several modules may be documented under any of them; dishka's own
    names are named and linked to dishka's documentation instead.
    """
    page = (DOCS / "reference.md").read_text(encoding="utf-8")
    documented = documented_objects(page)
    documented_ids = set()
    for path in documented:
        owner, _, name = path.rpartition(".")
        target = getattr(importlib.import_module(owner), name, None) if owner else None
        if target is None and owner:  # a member of a class: di_lifespan.App.lifespan
            continue
        documented_ids.add(id(target))
    missing = []
    for name in module.__all__:
        value = getattr(module, name)
        if f"{module.__name__}.{name}" in documented or id(value) in documented_ids:
            continue
        if getattr(value, "__module__", "").startswith("dishka") and f"`{name}`" in page:
            continue
        missing.append(f"::: {module.__name__}.{name}")
    assert not missing, f"add to docs/reference.md: {missing}"


def sections(page: str) -> dict[str, str]:
    """Each ``##``/``###`` heading of a page, with the text up to the next such heading."""
    parts = re.split(r"^#{2,3} (.+)$", page, flags=re.MULTILINE)
    return {title.strip(): text for title, text in zip(parts[1::2], parts[2::2], strict=True)}


def sample(error: type[_errors.DiLifespanError]) -> BaseException:
    """An instance of ``error`` made from placeholder arguments of the right kinds."""
    if error is _errors.ShutdownError:
        return error("the app stopped with errors", [_errors.ShutdownStepError("step", "why")])
    if error.__init__ is Exception.__init__:  # the root takes what Exception takes
        return error("x")
    arguments: dict[str, Any] = {}
    for parameter in inspect.signature(error).parameters.values():
        annotation = str(parameter.annotation)
        if parameter.default is not inspect.Parameter.empty or parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            continue
        if "float" in annotation or "int" in annotation:
            arguments[parameter.name] = 1.0
        elif "Sequence" in annotation:
            arguments[parameter.name] = ()
        else:
            arguments[parameter.name] = "x"
    return error(**arguments)


def fields(error: type[_errors.DiLifespanError]) -> set[str]:
    """The public attributes an instance of ``error`` carries."""
    if issubclass(error, ExceptionGroup):
        return {"message", "exceptions"}
    return {name for name in vars(sample(error)) if not name.startswith("_")}


ERRORS = [getattr(_errors, name) for name in _errors.__all__]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.__name__)
def test_the_error_catalogue_explains_every_error(error: type[_errors.DiLifespanError]) -> None:
    """Each error class has a section on the errors page naming its fields and a fix."""
    catalogue = sections((DOCS / "errors.md").read_text(encoding="utf-8"))
    assert error.__name__ in catalogue, f"docs/errors.md has no section for {error.__name__}"
    text = catalogue[error.__name__]
    named = set(re.findall(r"`(\w+)`", text))
    for base in error.__mro__[1:]:  # "and those of `TransportError`" covers the base's fields
        if f"those of `{base.__name__}`" in text:
            named |= fields(base)
    assert fields(error) <= named, f"{error.__name__}: fields not named: {fields(error) - named}"
    assert "fix" in text.lower(), f"{error.__name__}: its section says no fix"


def test_the_error_tree_on_the_page_is_the_one_in_the_code() -> None:
    """The hierarchy drawn on the errors page is the one drawn in _errors.py's docstring."""
    page = (DOCS / "errors.md").read_text(encoding="utf-8")
    (drawn,) = re.findall(r"^```text\n(DiLifespanError\n.*?)^```", page, re.DOTALL | re.MULTILINE)
    docstring = textwrap.dedent((_errors.__doc__ or "").split("::\n", 1)[1]).strip()
    assert drawn.strip() == docstring


def test_the_error_tree_is_the_class_hierarchy() -> None:
    """Each class in the drawn tree sits under the class the code derives it from."""
    docstring = textwrap.dedent((_errors.__doc__ or "").split("::\n", 1)[1])
    parents: list[str] = []
    drawn = set()
    for line in docstring.strip().splitlines():
        match = re.match(r"^([│ ]*(?:[├└]── )?)(\w+)", line)
        assert match, line
        depth = len(match.group(1)) // 4
        name = match.group(2)
        del parents[depth:]
        if parents:
            assert getattr(_errors, name).__mro__[1].__name__ == parents[-1], name
        parents.append(name)
        drawn.add(name)
    assert drawn == set(_errors.__all__)


PRINTS = re.compile(r"^# prints: (.*)$", re.MULTILINE)
PRINTING_PAGES = sorted(
    page for page in DOCS.glob("*.md") if any(PRINTS.search(b) for b in python_blocks(page))
)


def test_the_guides_say_what_their_examples_print() -> None:
    """The migration guide and the delivery page state the output of their examples."""
    assert {page.name for page in PRINTING_PAGES} >= {"migration.md", "delivery.md"}


@pytest.mark.parametrize("page", PRINTING_PAGES, ids=lambda page: page.name)
def test_each_example_prints_its_prints_comments(page: Path) -> None:
    """A block's ``# prints: ...`` lines are, in order, everything it prints."""
    for number, code in enumerate(python_blocks(page), start=1):
        output = run_block(code, f"docs/{page.stem}_{number}")
        assert output.splitlines() == PRINTS.findall(code), f"{page.name}, block {number}"


ILLUSTRATIVE = re.compile(r"^```py\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda page: page.name)
def test_illustrative_blocks_are_python_at_least(page: Path) -> None:
    """A ``py`` block is shown, not run (a fragment, or another framework's code); it compiles."""
    for number, code in enumerate(ILLUSTRATIVE.findall(page.read_text(encoding="utf-8")), 1):
        compile(code, f"{page.name} py block {number}", "exec", dont_inherit=True)


def guide_files(page: Path) -> dict[str, str]:
    """The files a guide makes: each block whose first line is ``# name.py`` or ``# name.toml``."""
    files = {}
    for _language, code in FENCE.findall(page.read_text(encoding="utf-8")):
        match = re.fullmatch(r"# ([\w.]+\.(?:py|toml))", code.splitlines()[0])
        if match:
            files[match.group(1)] = code
    return files


def printed_lines(page: Path, after: str) -> list[str]:
    """The lines of the first ``text`` block after the line ``after`` on a page."""
    text = page.read_text(encoding="utf-8").split(after, 1)[1]
    block = re.search(r"^```text\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, f"no text block after {after!r}"
    return block.group(1).splitlines()


def test_the_first_service_passes_its_tests_and_runs_on_the_embedded_broker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The getting-started project: its tests pass, and try_it.py prints what the page shows."""
    page = DOCS / "getting-started.md"
    files = guide_files(page)
    assert list(files) == ["myservice.py", "test_myservice.py", "pyproject.toml", "try_it.py"]
    for name, code in files.items():
        (pytester.path / name).write_text(code, encoding="utf-8")
    result = run_pytest(pytester, monkeypatch, "-W", "error", "-p", "no:asyncio")
    result.assert_outcomes(passed=3)
    ran = subprocess.run(
        [sys.executable, "try_it.py"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == printed_lines(page, "python try_it.py")


def test_every_page_is_in_the_nav() -> None:
    """Each page of docs/ is reachable from the site's navigation."""
    config = (DOCS.parent / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+- [^:]+: ([\w./-]+\.md)$", config, re.MULTILINE))
    pages = {str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md")}
    assert pages <= listed, f"not in mkdocs.yml nav: {sorted(pages - listed)}"
