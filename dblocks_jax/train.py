"""`train_and_evaluate(config, workdir)`: the one trainer.

Reads top to bottom: workdir and config -> data -> model, objective, plan ->
state (fresh or resumed) -> compiled steps -> loop (block draw, step, logs,
NaN check, eval, checkpoint) -> final evaluation (`eval.json`).

The workdir is the run: `config.json`, `metrics.jsonl`, `checkpoints/`,
`eval.json`. Re-running the same command resumes from the newest checkpoint
(params, optimizer states, step and data-iterator position); a changed block
topology is refused.
"""

import collections
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dblocks_jax import checkpoint, data, evaluate, experiment, metrics
from dblocks_jax.blockwise import optim, parallel, schedule, steps
from dblocks_jax.errors import ConfigError, DataError, NonFiniteLossError
from dblocks_jax.evaluate import features
from dblocks_jax.state import check_topology, init_state, restore_run


def make_loss(exp: experiment.Experiment, graphdefs, config, block: int):
  """The loss of block `block` (block-wise) or of the whole baseline."""
  if not exp.blockwise:
    return steps.make_end_to_end_loss(exp.objective, graphdefs)
  return steps.make_block_loss(
    exp.objective,
    graphdefs,
    graphdefs.blocks[block],
    exp.plan.train_ranges,
    p_mean=config.diffusion.p_mean,
    p_std=config.diffusion.p_std,
    sigma_sampling=config.blocks.sigma_sampling,
  )


def make_train_step(exp, graphdefs, config, tx, block: int, loss_fn=None):
  """The jitted step of `block` from the config (`loss_fn` overrides)."""
  return steps.build_train_step(
    loss_fn or make_loss(exp, graphdefs, config, block),
    tx,
    optim.learning_rate_fn(config.optimizer, config.total_steps),
    clip_norm=config.optimizer.clip_norm,
    accumulation_steps=config.accumulation_steps,
  )


def evaluate_state(exp, classify_fn, state, config) -> dict:
  """Test accuracy of `state` with the config's sampler (eval.json fields)."""
  batches = data.make_eval_batches(
    config.data, batch_size=config.eval_batch_size
  )
  result = evaluate.accuracy(
    classify_fn, state, batches, jax.random.key(config.seed + 1)
  )
  result["inference_steps"] = (
    (config.sampler.num_steps or exp.plan.num_blocks) if exp.blockwise else 1
  )
  return result


def make_evaluator(exp, graphdefs, config, workdir: str):
  """`evaluate(state) -> eval.json fields`: accuracy, or samples and FID."""
  if exp.task == "generation":
    sample_fn = evaluate.make_sample_fn(exp, graphdefs, config)
    feature_network = features.from_config(config)
    cache_dir = config.eval.reference_cache_dir or os.path.join(
      workdir, "fid_reference"
    )
    sample_pixels = None
    if feature_network is not None:
      # Fails now, not after training: VAE weights, reference images.
      sample_pixels = evaluate.SamplePixels(config)
      evaluate.generation.check_reference(feature_network, config, cache_dir)
    return lambda state: evaluate.evaluate_samples(
      exp,
      sample_fn,
      feature_network,
      state,
      config,
      cache_dir=cache_dir,
      sample_pixels=sample_pixels,
    )
  classify_fn = evaluate.make_classify_fn(exp, graphdefs, config)
  return lambda state: evaluate_state(exp, classify_fn, state, config)


def numeric(result: dict) -> dict:
  return {
    f"eval/{k}": v
    for k, v in result.items()
    if isinstance(v, (int, float)) and not isinstance(v, bool)
  }


def write_config(workdir: str, config, topology: dict) -> None:
  """Writes config.json, refusing a workdir whose run has another topology."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      check_topology(workdir, topology, json.load(f).get("topology"))
  payload = {
    "config": json.loads(config.to_json_best_effort()),
    "topology": topology,
  }
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


def check_data(config, info: data.DatasetInfo) -> None:
  """The config's declared image shape and classes must match the dataset."""
  declared = (tuple(config.data.image_shape), config.data.num_classes)
  actual = (tuple(info.image_shape), info.num_classes)
  if declared != actual:
    raise DataError(
      f"data.image_shape={list(declared[0])} and data.num_classes="
      f"{declared[1]} do not match dataset {info.name!r}"
      f" ({list(actual[0])}, {actual[1]} classes); set them to the dataset's."
    )


def check_batch(config) -> None:
  if config.batch_size % (config.accumulation_steps * jax.process_count()):
    raise ConfigError(
      f"batch_size={config.batch_size} must be divisible by"
      f" accumulation_steps={config.accumulation_steps} x processes"
      f"={jax.process_count()}."
    )


def summarise(window: list[tuple[int, int, dict]], blockwise: bool) -> dict:
  """Means over logged steps, overall and per block."""
  scalars = collections.defaultdict(list)
  for _, block, m in window:
    for name, value in m.items():
      scalars[name].append(value)
      if blockwise and name in ("loss", "ce", "mse"):
        scalars[f"{name}/block_{block}"].append(value)
  return {name: float(np.mean(v)) for name, v in scalars.items()}


def first_non_finite(window):
  for step, block, m in window:
    if not np.isfinite(m["loss"]):
      return step, block
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run of `config` in `workdir`; returns eval.json.

  Block-parallel configs (`parallel.block_groups > 1`, or `blocks.train`
  naming some blocks: a per-block job) run `parallel_train.train_parallel`.
  """
  if parallel.is_parallel(config):
    from dblocks_jax import parallel_train

    return parallel_train.train_parallel(config, workdir)
  # ----- Workdir, config and topology -------------------------------------
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  check_batch(config)
  exp = experiment.build(config)
  topology = exp.topology(config)
  info = data.dataset_info(config.data)
  check_data(config, info)
  write_config(workdir, config, topology)
  logging.info("Topology: %s", topology)

  # ----- Data ---------------------------------------------------------------
  per_process_batch = config.batch_size // jax.process_count()
  train_iter = data.make_train_iterator(
    config.data, batch_size=per_process_batch, seed=config.seed
  )

  # ----- Model, optimizer, state ------------------------------------------
  tx = optim.make_optimizer(config.optimizer)
  graphdefs, state = init_state(exp, tx)
  num_params = sum(
    x.size
    for x in jax.tree.leaves(
      [state["shared"].get("params", {})]
      + [b["params"] for b in state["blocks"]]
    )
  )
  logging.info("Parameters: %d (%s)", num_params, exp.method)

  # ----- Restore --------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    max_to_keep=config.keep_checkpoints,
    save_interval_steps=config.checkpoint_every_steps,
  )
  if ckpt.latest_step() is not None:
    check_topology(workdir, topology, ckpt.read_metadata().get("topology"))
    state, _ = ckpt.restore(state, data_iterator=train_iter)
    logging.info("Resumed from step %d.", int(state["step"]))
  start_step = int(state["step"])

  # ----- Steps ----------------------------------------------------------------
  if exp.blockwise:
    block_schedule = schedule.BlockSchedule(
      config.blocks.schedule,
      exp.plan.num_blocks,
      tuple(config.blocks.train),
      seed=config.seed,
    )
  step_fns = {}

  def step_fn_for(block: int):
    """One compiled step per distinct block structure."""
    key = graphdefs.block_key(block) if exp.blockwise else None
    if key not in step_fns:
      step_fns[key] = make_train_step(exp, graphdefs, config, tx, block)
    return step_fns[key]

  evaluator = make_evaluator(exp, graphdefs, config, workdir)

  def run_eval() -> dict:
    return evaluator(state)

  # ----- Loop ----------------------------------------------------------------
  writer = metrics.MetricWriter(workdir, tensorboard=config.tensorboard)
  progress = metrics.Progress(config.total_steps, start_step)
  train_key = jax.random.key(config.seed)
  window: list[tuple[int, int, dict]] = []
  blocks_ahead = np.zeros(0, np.int64)
  checked_step = start_step

  def flush_window(step: int) -> None:
    """Fetches the window's metrics; stops on NaN before anything is saved."""
    nonlocal window, checked_step
    fetched = [(s, b, jax.device_get(m)) for s, b, m in window]
    window = []
    bad = first_non_finite(fetched)
    if bad is not None:
      writer.flush()
      raise NonFiniteLossError(
        f"non-finite loss at step {bad[0]} (block {bad[1]}); the last"
        f" checkpoint (step {ckpt.latest_step()}) is intact. Lower"
        " optimizer.learning_rate or set diffusion.max_weight."
      )
    checked_step = step
    if fetched:
      scalars = summarise(fetched, exp.blockwise)
      scalars.update(progress.update(step))
      writer.write_scalars(step, scalars)
      logging.info("%s loss %.4f", progress.describe(step), scalars["loss"])

  try:
    for step in range(start_step, config.total_steps):
      if exp.blockwise:
        if not len(blocks_ahead):
          blocks_ahead = block_schedule(step, 1000)
        block, blocks_ahead = int(blocks_ahead[0]), blocks_ahead[1:]
      else:
        block = 0
      batch = jax.tree.map(jnp.asarray, next(train_iter))
      groups = steps.groups_for_block(
        state["shared"], state["blocks"][block] if exp.blockwise else None
      )
      new_groups, step_metrics = step_fn_for(block)(
        groups,
        state["fixed"],
        batch,
        jax.random.fold_in(train_key, step),
        step,
        block,
      )
      if "shared" in new_groups:
        state["shared"] = new_groups["shared"]
      if "block" in new_groups:
        state["blocks"][block] = new_groups["block"]
      state["step"] = jnp.asarray(step + 1, jnp.int32)
      window.append((step + 1, block, step_metrics))
      if step == start_step:
        logging.info("Compiled and ran the first step (block %d).", block)

      done = step + 1
      last = done == config.total_steps
      if done % config.log_every_steps == 0 or last:
        flush_window(done)
      if (
        config.eval_every_steps
        and done % config.eval_every_steps == 0
        and not last
      ):
        with progress.paused():
          result = run_eval()
        writer.write_scalars(done, numeric(result))
        logging.info("Eval at step %d: %s", done, result)
      if ckpt.should_save(done) or last:
        flush_window(done)
        with progress.paused():
          ckpt.save(
            done,
            state,
            data_iterator=train_iter,
            metadata={"topology": topology},
            force=last,
          )
  finally:
    # An error or NaN must not leave the newest save half written.
    ckpt.wait_until_finished()
    writer.flush()

  # ----- Final evaluation ----------------------------------------------------
  result = run_eval()
  result.update(step=int(state["step"]), method=exp.method)
  writer.write_scalars(int(state["step"]), numeric(result))
  writer.write_json("eval.json", result)
  writer.close()
  ckpt.close()
  logging.info("Final eval: %s", result)
  return result


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """--mode=eval: evaluates the newest checkpoint; writes eval.json."""
  workdir = os.path.abspath(workdir)
  exp, graphdefs, state = restore_run(config, workdir)
  result = make_evaluator(exp, graphdefs, config, workdir)(state)
  result.update(step=int(state["step"]), method=exp.method)
  metrics.MetricWriter(workdir).write_json("eval.json", result)
  return result


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """--mode=sample: images from the newest checkpoint of a generator.

  Writes `samples/step_<N>.png` (a grid, one column per class by default)
  and `samples/step_<N>.npz` (`images` uint8 [n, H, W, C], `labels` [n], and
  the sampler settings). The same config and seed give the same images.
  """
  workdir = os.path.abspath(workdir)
  exp, graphdefs, state = restore_run(config, workdir)
  if exp.task != "generation":
    raise ConfigError(
      f"--mode=sample needs a generator (model.name='dit'); this config"
      f" trains a {config.model.name} classifier. Use --mode=eval."
    )
  sample_fn = evaluate.make_sample_fn(exp, graphdefs, config)
  s = config.sample
  labels = (
    np.asarray(s.labels, np.int32)
    if len(s.labels)
    else evaluate.generation.class_labels(
      s.num_samples, config.data.num_classes
    )
  )
  images = evaluate.generate(
    sample_fn,
    state,
    labels,
    jax.random.key(s.seed),
    batch_size=min(config.eval_batch_size, len(labels)),
  )
  # Latents are decoded by the VAE, as in the FID evaluation.
  pixels = evaluate.SamplePixels(config)(images, config.eval_batch_size)
  step = int(state["step"])
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, f"step_{step}")
  sampler = {
    "inference_steps": int(config.sampler.num_steps or exp.plan.num_blocks),
    "sampler": config.sampler.method,
    "guidance_scale": float(config.sampler.guidance_scale),
    "seed": int(s.seed),
  }
  np.savez(stem + ".npz", images=pixels, labels=labels, **sampler)
  columns = s.columns or min(len(labels), config.data.num_classes)
  evaluate.generation.save_png(
    evaluate.image_grid(pixels, columns), stem + ".png"
  )
  return {
    "png": stem + ".png",
    "npz": stem + ".npz",
    "num_samples": int(len(labels)),
    "step": step,
    **sampler,
  }
