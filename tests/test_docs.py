"""Every Python code block of the README and docs/library.md runs.

A block runs alone, in a fresh namespace, as a reader would paste it into
a new session; a block whose first line is a comment starting with
`# Continues` runs after the blocks before it, in their namespace. A line
`STEPS = <n>` and every `total_steps=<n>` are shortened to a few steps (the
documents' figures come from the full runs; here the code must only work).
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", os.path.join("docs", "library.md"))
CONTINUES = "# Continues"


def python_blocks(path: str) -> list[str]:
  with open(os.path.join(ROOT, path)) as f:
    text = f.read()
  return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def shortened(block: str) -> str:
  code = re.sub(r"^STEPS = \d+", "STEPS = 40", block, flags=re.M)
  return re.sub(r"total_steps=\d+", "total_steps=40", code)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_code_blocks_run(document, monkeypatch, capsys):
  blocks = python_blocks(document)
  assert blocks, f"{document} has no python code block"
  assert not blocks[0].startswith(CONTINUES), "the first block continues?"
  monkeypatch.chdir(ROOT)
  namespace = {}
  for i, block in enumerate(blocks):
    if not block.startswith(CONTINUES):
      namespace = {"__name__": "__main__"}  # Alone: a fresh session.
    code = compile(shortened(block), f"{document}, block {i + 1}", "exec")
    exec(code, namespace)
  assert capsys.readouterr().out  # Each document's example prints.
