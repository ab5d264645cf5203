"""The documentation's code: every ```python block of the getting-started page and of each guide runs,
in order, one namespace per page, and every `modefuse ...` command of their ```sh blocks runs on small
checkpoints made under the names the guides use (so a guide that stops working fails here, not in a
reader's hands). The `make` lines are what CI and `../shared/tools/bare-machine` run. The site itself is
built with warnings as errors by `make docs` (and `make test`)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [DOCS / "index.md", *sorted((DOCS / "guides").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SHELL = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def _commands(page: Path) -> list[list[str]]:
    """The `modefuse` command lines of a page's shell blocks (continuations joined, comments dropped)."""
    out = []
    for block in SHELL.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "modefuse":
                out.append(words)
    return out


def test_every_guide_has_runnable_code():
    assert len(PAGES) >= 6
    for page in PAGES[1:]:
        if page.name != "federated.md":
            assert BLOCK.findall(page.read_text()), f"{page.name} has no Python to run"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_code_of_each_page_runs(page, tmp_path, monkeypatch, capsys, fmnist_test):
    monkeypatch.chdir(tmp_path)  # anything a guide writes stays in the test's folder
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(BLOCK.findall(page.read_text())):
        exec(compile(code, f"{page.name}, block {i + 1}", "exec"), namespace)


SHELL_PAGES = [p for p in PAGES if _commands(p)]


def test_the_guides_show_commands():
    assert {p.name for p in SHELL_PAGES} >= {"align.md", "fuse.md", "federated.md"}


@pytest.mark.parametrize("page", SHELL_PAGES, ids=lambda p: p.name)
def test_the_commands_of_each_page_run(page, tmp_path, fmnist_train):
    import modefuse as mf
    (tmp_path / "runs").mkdir()
    data = fmnist_train.subset(range(2000))
    for s, name in enumerate("abc"):  # the checkpoints the guides name
        m = mf.models.build("mlp", widths=[48, 32, 16], seed=s)
        mf.train(m, data, epochs=1, seed=s, progress=False)
        mf.save(m, tmp_path / "runs" / f"{name}.safetensors", dataset="fashion-mnist")
    for words in _commands(page):
        res = subprocess.run([sys.executable, "-m", "modefuse.cli", *words[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, f"{page.name}: {shlex.join(words)}\n{res.stderr[-2000:]}"
        for i, w in enumerate(words):  # what the command was asked to write is there
            if w in ("--out", "--plot"):
                assert (tmp_path / words[i + 1]).is_file(), f"{shlex.join(words)} wrote no {words[i + 1]}"


def test_the_source_files_the_docs_name_exist():
    """A file path in the README or a guide (`modefuse/spec/rules.py`) still points at a file."""
    root = DOCS.parent
    for page in [root / "README.md", *PAGES]:
        for path in set(re.findall(r"modefuse/[\w/]+\.py", page.read_text())):
            assert (root / "src" / path).is_file(), f"{page.name} names {path}, which does not exist"
