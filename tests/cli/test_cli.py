"""The command line: one-line errors for bad input, and the train command."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SMOKE = "--config=configs/quickstart.py:smoke,official"


def _main(*args, workdir):
  return subprocess.run(
    [sys.executable, "-m", "dblocks_jax.main", *args, f"--workdir={workdir}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def _assert_one_line_error(proc, *fragments):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ")
  for fragment in fragments:
    assert fragment in last, last


@pytest.mark.parametrize(
  ("override", "fragments"),
  [
    ("--config.blocks.num_blocks=4", ["blocks.num_blocks=4", "larger"]),
    (
      "--config.blocks.layer_distribution=(1,1,2)",
      ["blocks.layer_distribution", "sums to 4"],
    ),
    ("--config.diffusion.sigma_min=90.0", ["diffusion.sigma_min=90.0"]),
    ("--config.blocks.gamma=0.7", ["blocks.gamma=0.7", "[0, 0.5]"]),
    ("--config.data.name=imagenet21k", ["data.name", "imagenet21k"]),
  ],
)
def test_bad_config_is_one_line(tmp_path, override, fragments):
  _assert_one_line_error(_main(SMOKE, override, workdir=tmp_path), *fragments)


def test_missing_dataset_says_how_to_get_it(tmp_path):
  proc = _main(
    "--config=configs/vit_fashion_mnist.py:smoke",
    "--config.data.name=fashion_mnist_idx",
    f"--config.data.dir={tmp_path}/nowhere",
    workdir=tmp_path,
  )
  _assert_one_line_error(proc, "apt-get install dataset-fashion-mnist")
  proc = _main(
    "--config=configs/vit_cifar100.py:smoke",
    "--config.data.name=cifar100",
    f"--config.data.dir={tmp_path}/tfds",
    workdir=tmp_path,
  )
  _assert_one_line_error(proc, "tfds build cifar100 --file_format=array_record")


def test_train_then_resume_with_another_b_is_refused(tmp_path):
  proc = _main(SMOKE, workdir=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("accuracy: ")
  assert os.path.exists(tmp_path / "eval.json")
  proc = _main(SMOKE, "--config.blocks.num_blocks=1", workdir=tmp_path)
  _assert_one_line_error(proc, "num_blocks: 3 -> 1", "new --workdir")


def test_eval_without_a_checkpoint_is_one_line_and_writes_nothing(tmp_path):
  untrained = tmp_path / "untrained"
  proc = _main(SMOKE, "--mode=eval", workdir=untrained)
  _assert_one_line_error(proc, "no checkpoint in", "train first")
  assert not (untrained / "checkpoints").exists()


def test_dit_sample_command_and_its_errors(tmp_path):
  """Train a tiny DiT without label dropout, sample it, and refuse guidance
  (which needs the null class), a corrupt VAE file, and a missing one."""
  dit = "--config=configs/dit_fashion_mnist.py:smoke"
  no_guidance = ["--config.model.label_dropout=0.0"]
  proc = _main(
    dit, *no_guidance, "--config.sampler.guidance_scale=1.0", workdir=tmp_path
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "no FID" in proc.stdout
  proc = _main(
    dit,
    *no_guidance,
    "--config.sampler.guidance_scale=1.0",
    "--mode=sample",
    workdir=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith("samples: 20")
  assert os.path.exists(tmp_path / "samples" / "step_12.png")
  proc = _main(dit, *no_guidance, "--mode=sample", workdir=tmp_path)
  _assert_one_line_error(proc, "sampler.guidance_scale=2.0", "label_dropout")

  corrupt = tmp_path / "vae.safetensors"
  corrupt.write_bytes(b"not safetensors" * 20)
  encode = [
    "--config=configs/dit_imagenet.py:smoke",
    "--mode=encode",
    f"--config.data.dir={tmp_path}/latents",
  ]
  proc = _main(
    *encode, f"--config.encode.vae_weights={corrupt}", workdir=tmp_path
  )
  _assert_one_line_error(proc, "not a readable safetensors")
  proc = _main(
    *encode, f"--config.encode.vae_weights={tmp_path}/no.st", workdir=tmp_path
  )
  _assert_one_line_error(proc, "huggingface-cli download")


def test_plan_prints_the_table_and_the_command_to_run(tmp_path):
  candidates = [
    "--config.plan.num_blocks=(1,3)",
    "--config.plan.per_device_batch=(8,)",
    "--config.plan.remat=('none',)",
  ]
  proc = _main(
    SMOKE,
    "--mode=plan",
    "--config.plan.device_memory=1GiB",
    "--config.model.dtype=bfloat16",
    *candidates,
    workdir=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["B"])
  rows = [line.split() for line in lines[header + 1 : header + 3]]
  assert [r[0] for r in rows] == ["1", "3"] and rows[1][1] == "1,1,1"
  assert all(r[-1] == "yes" for r in rows)
  assert any(line.startswith("recommended: B=1, 8 examples") for line in lines)
  # The command keeps the config and its overrides, not the plan's fields.
  assert (
    "python -m dblocks_jax.main --config=configs/quickstart.py:smoke,official"
    " --config.model.dtype=bfloat16 --config.blocks.num_blocks=1"
    " --config.batch_size=8 --config.model.remat=none"
    f" --workdir={tmp_path}/train"
  ) in lines
  assert (tmp_path / "plan.json").exists()
  proc = _main(
    SMOKE,
    "--mode=plan",
    "--config.plan.device_memory=16 gigs",
    workdir=tmp_path,
  )
  _assert_one_line_error(proc, "plan.device_memory='16 gigs'", "16GiB")
