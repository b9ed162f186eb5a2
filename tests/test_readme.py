"""Every ```python block of the README and of docs/*.md runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (f"{page.relative_to(ROOT)} block {i}", block)
    for page in PAGES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
]


def test_readme_and_the_python_api_page_have_python_examples():
    names = {name.split(" block")[0] for name, _ in BLOCKS}
    assert {"README.md", "docs/python-api.md"} <= names


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[name for name, _ in BLOCKS])
def test_readme_block_runs(index):
    name, block = BLOCKS[index]
    exec(compile(block, name, "exec"), {})
