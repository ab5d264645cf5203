"""The documentation's Python: every ```python block of the getting-started page and of each guide runs,
in order, one namespace per page (so a guide that stops working fails here, not in a reader's hands).
The site itself is built with warnings as errors by `make docs` (and `make test`)."""
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [DOCS / "index.md", *sorted((DOCS / "guides").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


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
