"""The notebooks under colab/ run top to bottom on CPU and produce results.

Each notebook is executed by nbclient in its CPU size with its output
folder in a temporary directory, then the test reads what it wrote
(`results.json` and its figures) and checks the results, not only that it
ran. Committed notebooks carry no outputs.

Running the notebooks takes minutes each on 2 CPU cores, so they are marked
`slow` and run with `python -m pytest -q -n 2 --slow tests/test_notebooks.py`
(conftest.py); the checks of the committed files always run.
"""

import json
import math
import os
import re
import string

import pytest
from conftest import FAST_COMPILE_FLAGS

REASON = "needs the [test] extra ({})"
nbformat = pytest.importorskip("nbformat", reason=REASON.format("nbformat"))
nbclient = pytest.importorskip("nbclient", reason=REASON.format("nbclient"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = sorted(f for f in os.listdir(COLAB) if f.endswith(".ipynb"))


# The extras each notebook's first cell installs (beyond the core), and the
# modules that tell whether they are installed here.
EXTRAS = {name: ("notebooks",) for name in NOTEBOOKS}
EXTRAS["05_language_models.ipynb"] = ("notebooks", "lm")
MODULES = {"notebooks": "matplotlib", "lm": "sentencepiece"}


def execute(name: str, out: str, monkeypatch) -> dict:
  """Runs colab/<name> with its outputs in `out`; -> its results.json (the
  test skips without an extra the notebook needs)."""
  for extra in EXTRAS[name]:
    pytest.importorskip(
      MODULES[extra], reason=f"{name} needs the [{extra}] extra"
    )
  monkeypatch.setenv("DBLOCKS_NOTEBOOK_OUT", out)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # As a user runs it: the notebooks train for hundreds of steps, where XLA's
  # optimisations and fusion emitters (off for the rest of the suite,
  # conftest.py) pay.
  monkeypatch.delenv("JAX_DISABLE_MOST_OPTIMIZATIONS", raising=False)
  flags = os.environ.get("XLA_FLAGS", "").replace(FAST_COMPILE_FLAGS, "")
  monkeypatch.setenv("XLA_FLAGS", flags.strip())
  notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
  client = nbclient.NotebookClient(
    notebook,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": COLAB}},
  )
  client.execute()  # A cell that raises fails the test (CellExecutionError).
  with open(os.path.join(out, "results.json")) as f:
    return json.load(f)


def figures_written(out: str, results: dict) -> list[str]:
  for figure in results["figures"]:
    assert os.path.getsize(os.path.join(out, figure)) > 10_000, figure
  return results["figures"]


def test_notebooks_are_committed_without_outputs():
  assert NOTEBOOKS, "colab/ has no notebook"
  for name in NOTEBOOKS:
    notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert not cell.outputs, f"{name}: a cell has outputs; clear them"
        assert cell.execution_count is None, f"{name}: clear execution"


def test_each_notebook_installs_the_extras_it_needs():
  for name in NOTEBOOKS:
    notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
    install = next(c for c in notebook.cells if c.cell_type == "code").source
    extras = re.findall(r"\{CLONE\}\[([\w,]+)\]", install)
    assert extras == [",".join(EXTRAS[name])], (name, extras)


def test_readme_opens_every_notebook_in_colab():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  for name in NOTEBOOKS:
    assert (
      "https://colab.research.google.com/github/dblocks-jax/dblocks_jax"
      f"/blob/main/colab/{name}" in readme
    ), name


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
  results = execute("01_quickstart.ipynb", str(tmp_path), monkeypatch)
  assert sorted(figures_written(str(tmp_path), results)) == [
    "accuracy_vs_compute.png",
    "loss_per_block.png",
    "partition.png",
    "step_memory.png",
  ]
  accuracy = results["accuracy"]
  assert accuracy["DiffusionBlocks"] > 0.5  # 10 classes: chance is 0.1.
  assert accuracy["end to end"] > 0.5
  for curve in results["accuracy_curves"].values():
    assert len(curve) >= 6  # Evaluations during training, and at the end.
  # A block step holds fewer layers than the end-to-end step.
  temp = results["temp_bytes"]
  assert temp["DiffusionBlocks"] < temp["end to end"]
  flops = results["flops_per_step"]
  assert flops["DiffusionBlocks"] < flops["end to end"]


@pytest.mark.slow
def test_bring_your_own_model(tmp_path, monkeypatch):
  results = execute("02_bring_your_own_model.ipynb", str(tmp_path), monkeypatch)
  assert sorted(figures_written(str(tmp_path), results)) == [
    "accuracy_by_model.png",
    "accuracy_vs_sampler_steps.png",
    "loss_per_block.png",
  ]
  # The restored trainer is the trained one: its step and its predictions.
  assert results["restored_step"] == 2 * results["steps"]
  assert results["same_predictions"] is True
  for name, accuracy in results["accuracy"].items():
    assert accuracy > 0.6, name  # NNX, Linen, one block; chance is 0.1.
  by_steps = results["accuracy_by_sampler_steps"]
  assert by_steps["4"] > 0.6 and by_steps["12"] > 0.6


@pytest.mark.slow
def test_language_models(tmp_path, monkeypatch):
  results = execute("05_language_models.ipynb", str(tmp_path), monkeypatch)
  assert sorted(figures_written(str(tmp_path), results)) == [
    "ar_accuracy.png",
    "ar_perplexity.png",
    "mdm_bpc.png",
  ]
  # Masked diffusion: bits per character on the test split, below a uniform
  # guess over the 27 symbols (log2 27 = 4.75) after both runs.
  mdm = results["mdm"]
  assert mdm["uniform_bpc"] == math.log2(27)
  for name in ("DiffusionBlocks", "end to end"):
    bpc = mdm["bpc"][name]
    assert math.isfinite(bpc) and 0 < bpc < mdm["uniform_bpc"] - 0.3, name
    assert 0 < mdm["bpc_stderr"][name] < 0.5
    curve = mdm["bpc_curves"][name]
    assert len(curve) >= 4  # Evaluations during training, and at the end.
    assert all(0 < v < mdm["uniform_bpc"] for v in curve)
    assert curve[-1] == bpc
    # Samples: full-length sequences over the alphabet (space, a-z).
    samples = mdm["samples"][name]
    assert len(samples) >= 2
    for sample in samples:
      assert len(sample) == mdm["seq_len"], sample
      assert set(sample) <= set(" " + string.ascii_lowercase), sample
      assert sample.strip(), sample
  # The blocks' shares sum to the DiffusionBlocks BPC.
  shares = mdm["bpc_per_block"]
  assert len(shares) == 3 and all(s > 0 for s in shares)
  assert math.isclose(sum(shares), mdm["bpc"]["DiffusionBlocks"], rel_tol=1e-4)
  # The block-wise run takes B x the baseline's steps.
  assert mdm["steps"]["DiffusionBlocks"] == 3 * mdm["steps"]["end to end"]

  # Autoregressive: the baseline's training perplexity falls well below the
  # vocabulary size (a uniform guess).
  ar = results["ar"]
  vocab = ar["vocab_size"]
  perplexity = ar["perplexity_curve"]
  assert len(perplexity) >= 10 and all(math.isfinite(p) for p in perplexity)
  assert perplexity[-1] < vocab / 4
  assert perplexity[-1] < perplexity[0] / 2
  # Each block's denoising perplexity: the noisiest block's task is hardest.
  blocks = ar["block_perplexity"]
  assert len(blocks) == 3
  assert all(1 <= p < vocab for p in blocks.values())
  assert blocks["block_0"] > blocks["block_2"]
  for name in ("DiffusionBlocks", "end to end"):
    accuracy = ar["accuracy"][name]
    assert 1 / vocab < accuracy <= 1, name  # Above a uniform guess.
    assert len(ar["accuracy_curves"][name]) >= 4
    assert ar["accuracy_curves"][name][-1] == accuracy
    continuations = ar["continuations"][name]
    assert len(continuations) >= 4
    assert all(c.strip() for c in continuations), continuations
  assert ar["steps"]["DiffusionBlocks"] == 3 * ar["steps"]["end to end"]


@pytest.mark.slow
def test_dit_generation(tmp_path, monkeypatch):
  results = execute("03_dit_generation.ipynb", str(tmp_path), monkeypatch)
  assert sorted(figures_written(str(tmp_path), results)) == [
    "frechet_distance.png",
    "loss_per_block.png",
    "sampler_speed.png",
    "samples.png",
  ]
  # The feature network learned the digits (10 classes: chance is 0.1).
  assert results["classifier_accuracy"] > 0.6
  # Ten samples of each class, 8x8 grey pixels.
  assert results["samples_shape"] == [100, 8, 8, 1]
  fd = results["fd"]
  assert all(math.isfinite(v) and v >= 0 for v in fd.values()), fd
  # Real training digits and both generators are far closer to the test
  # digits than noise is (CPU run: 2.0, 3.6 and 6.1 against 89).
  noise = fd["uniform noise"]
  assert fd["real (train split)"] < 0.1 * noise, fd
  assert fd["DiffusionBlocks"] < 0.1 * noise, fd
  assert fd["end to end"] < 0.25 * noise, fd
  # The routed sampler runs L/B layers per step, the baseline all L (B=2)
  speed = results["images_per_second"]
  # (Timed, so not compared here: speed belongs in benchmarks.)
  assert speed["DiffusionBlocks"] > 0 and speed["end to end"] > 0


@pytest.mark.slow
def test_tpu_block_parallel(tmp_path, monkeypatch):
  results = execute("04_tpu_block_parallel.ipynb", str(tmp_path), monkeypatch)
  assert sorted(figures_written(str(tmp_path), results)) == [
    "memory_per_device.png",
    "mesh.png",
  ]
  assert results["environment"].startswith("4 x cpu")  # Fake devices.
  assert results["mesh_shape"] == {"block": 2, "data": 2}
  accuracy = results["accuracy"]
  assert accuracy["mesh"] > 0.15  # 10 classes; a short CPU run.
  # The assembled jobs are the mesh run's model, up to amplified rounding.
  assert abs(accuracy["assembled"] - accuracy["mesh"]) <= 0.1
  assert results["max_parameter_difference"] < 0.5
  held = results["held_state_bytes_per_device"]
  mesh = held["block-wise, mesh of 2 groups"]
  # A mesh device holds one of the two blocks (with its own shell) and its
  # step's counters: half of what a device training both in turn holds.
  assert mesh == pytest.approx(held["block-wise, one device in turn"] / 2, 0.01)
  total = results["total_bytes_per_device"]
  assert total["block-wise, mesh of 2 groups"] < total["end to end, one device"]
