"""Optional dependencies: setup.cfg's extras by need, and the one-line error
that names the extra when one is missing."""

import configparser
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dblocks_jax import errors
from dblocks_jax.evaluate import judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(text: str) -> list[str]:
  """The project names of setup.cfg requirement lines (extras kept)."""
  return [
    re.split(r"[<>=!~;\s]", line.strip())[0]
    for line in text.splitlines()
    if line.strip()
  ]


@pytest.fixture(scope="module")
def setup_cfg():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(ROOT, "setup.cfg"))
  core = _requirements(parser["options"]["install_requires"])
  extras = {
    name: _requirements(value)
    for name, value in parser["options.extras_require"].items()
  }
  return core, extras


def test_each_optional_module_is_in_the_extra_its_error_names(setup_cfg):
  core, extras = setup_cfg
  for package, extra in errors.OPTIONAL_MODULES.values():
    assert package in extras[extra], (package, extra)
    assert package not in core, package


def test_the_core_holds_none_of_the_language_models_stack(setup_cfg):
  core, _ = setup_cfg
  for package in ("faiss-cpu", "mauve-text", "sentencepiece", "safetensors"):
    assert package not in core, package
  assert "chex" in core


def test_the_test_extra_installs_every_other_extra(setup_cfg):
  _, extras = setup_cfg
  others = sorted(set(extras) - {"test"})
  (self_reference,) = [r for r in extras["test"] if r.startswith("dblocks_jax")]
  listed = re.fullmatch(r"dblocks_jax\[([\w,]+)\]", self_reference).group(1)
  assert sorted(listed.split(",")) == others


def test_a_missing_extra_is_an_import_error_that_names_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "mauve", None)  # As if not installed.
  with pytest.raises(ImportError) as info:
    judge.mauve(np.zeros((4, 2)), np.zeros((4, 2)), scaling=1.0, seed=0)
  assert isinstance(info.value, errors.MissingExtraError)
  assert str(info.value) == (
    "the language models' evaluation (MAUVE) needs mauve-text:"
    " pip install 'dblocks_jax[lm]'"
  )


def test_the_command_line_reports_a_missing_extra_in_one_line(tmp_path):
  # An LM1B run reads its tokenizer first (no corpus needed to get there),
  # without SentencePiece (hidden from the import system).
  tokenizer = tmp_path / "tokenizer.model"
  tokenizer.write_bytes(b"not read: the package is missing")
  code = (
    "import sys; sys.modules['sentencepiece'] = None\n"
    "from absl import app\n"
    "from dblocks_jax import main\n"
    "app.run(main.main)\n"
  )
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      code,
      "--config=configs/ar_lm1b.py:smoke",
      "--config.data.name=lm1b",
      f"--config.data.tokenizer={tokenizer}",
      f"--workdir={tmp_path / 'run'}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == errors.EXIT_CONFIG, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
    "error: the language models' tokenizer needs sentencepiece:"
    " pip install 'dblocks_jax[lm]'"
  )
