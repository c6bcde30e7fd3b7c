"""Every Python code block of the README and docs/library.md runs.

The blocks of one file run in order in one namespace, as a reader would run
them. A line `STEPS = <n>` is shortened to a few steps (the documents'
figures come from the full runs; here the code must only work).
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", os.path.join("docs", "library.md"))


def python_blocks(path: str) -> list[str]:
  with open(os.path.join(ROOT, path)) as f:
    text = f.read()
  return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_code_blocks_run(document, monkeypatch, capsys):
  blocks = python_blocks(document)
  assert blocks, f"{document} has no python code block"
  monkeypatch.chdir(ROOT)
  namespace = {"__name__": "__main__"}
  for block in blocks:
    code = re.sub(r"^STEPS = \d+", "STEPS = 40", block, flags=re.M)
    code = re.sub(r"total_steps=\d+", "total_steps=40", code)
    exec(compile(code, document, "exec"), namespace)
  assert capsys.readouterr().out  # Each document's example prints.
