"""The config layer shared by the families: config fields -> the explicit
arguments of the noise process, the plan, the optimizer and the trainer, and
the image data streams."""

import jax
import jax.numpy as jnp
import optax

from dblocks_jax import errors
from dblocks_jax.blockwise.parts import BlockwiseModel
from dblocks_jax.blockwise.plan import BlockPlan
from dblocks_jax.diffusion.process import EDM
from dblocks_jax.errors import ConfigError, DataError
from dblocks_jax.families.base import METHODS, Experiment
from dblocks_jax.nn import precision
from dblocks_jax.nn import remat as remat_lib
from dblocks_jax.tasks.base import Sampler

OPTIMIZERS = ("adamw",)
LR_SCHEDULES = ("cosine", "constant")


def check_choice(value, choices, field: str, hint: str = "") -> None:
  if value not in choices:
    raise ConfigError(
      f"{field}={value!r} is unknown; choose one of {tuple(choices)}{hint}."
    )


def check_method(config) -> str:
  check_choice(config.method, METHODS, "method")
  return config.method


def model_dtypes(config) -> dict:
  """{"dtype", "param_dtype"}: `model.dtype` (the compute dtype) and
  `model.param_dtype`, checked (`nn.precision`)."""
  m = config.model
  for field in ("dtype", "param_dtype"):
    check_choice(m[field], tuple(precision.DTYPES), f"model.{field}")
  return {"dtype": m.dtype, "param_dtype": m.param_dtype}


def model_remat(config) -> str:
  """`model.remat` as a policy name (`nn.remat`); the booleans of old
  config.json files read as "full" (True) and "none" (False)."""
  with errors.config_fields({"remat": "model.remat"}):
    return remat_lib.remat_name(config.model.remat)


def fields(section, *names) -> dict:
  """{name: section.<name>}: fields of a config section, as arguments."""
  return {name: getattr(section, name) for name in names}


def model_spec(make, config, *names, **more):
  """A family's model config: `make` of the `model.<names>` fields, the
  `more` arguments, `model.remat` and the checked dtypes."""
  return make(
    **fields(config.model, *names),
    **more,
    remat=model_remat(config),
    **model_dtypes(config),
  )


def check_seq_len(config, context: str) -> None:
  """`data.seq_len` must fit `model.max_seq_len`, the length of the
  model's `context`."""
  seq_len, max_len = config.data.seq_len, config.model.max_seq_len
  if seq_len > max_len:
    raise ConfigError(
      f"data.seq_len={seq_len} is longer than {context}"
      f" (model.max_seq_len={max_len}); lower data.seq_len or raise"
      " model.max_seq_len."
    )


def noise_from_config(config) -> EDM:
  """The EDM process of `config.diffusion` (and `blocks.sigma_sampling`)."""
  d = config.diffusion
  names = ("sigma_min", "sigma_max", "p_mean", "p_std", "sigma_data")
  with errors.config_fields():
    return EDM(
      **fields(d, *names),
      sampling=config.blocks.sigma_sampling,
      rho=config.sampler.rho,
    )


def plan_from_config(
  config, *, single_block: bool = False, noise=None, num_layers=None
) -> BlockPlan:
  """The plan of `config.blocks` over `num_layers` layers (default
  `model.num_layers`); with `single_block`, the diffusion baseline's one
  block over the whole range. `noise`: the noise process (default: EDM's,
  `noise_from_config`)."""
  b = config.blocks
  num_layers = num_layers or config.model.num_layers
  with errors.config_fields():
    check_choice(b.sharing, ("shared", "independent"), "blocks.sharing")
    noise = noise or noise_from_config(config)
    if single_block:
      return BlockPlan.create(
        noise,
        num_layers=num_layers,
        num_blocks=1,
        gamma=b.gamma,
      )
    return BlockPlan.create(
      noise,
      num_layers=num_layers,
      num_blocks=b.num_blocks,
      gamma=b.gamma,
      partition=b.partition,
      layer_distribution=tuple(b.layer_distribution),
      boundaries=tuple(b.boundaries) or None,
    )


def sampler_from_config(config, plan) -> Sampler | None:
  """The routed sampler of `config.sampler` over `plan`'s grid; None for a
  baseline trained without noise (`plan` None)."""
  if plan is None:
    return None
  s = config.sampler
  with errors.config_fields():
    return Sampler.of(plan, s.num_steps, s.grid, s.method)


def check_build(config) -> str:
  """The opening of every family's `build`: `method`, checked, and the
  block-parallel settings checked against it."""
  method = check_method(config)
  check_parallel(config)
  return method


def end_to_end_model(config, network) -> BlockwiseModel:
  """The baseline's one network, `network(rngs)`, seeded by `seed`."""
  from flax import nnx

  rngs = nnx.Rngs(params=config.seed)
  return BlockwiseModel.end_to_end({"model": network(rngs)})


def blockwise_model(
  config, plan, *, shell, layers, fixed=None, held_blocks=None
):
  """`BlockwiseModel.build` with the config's sharing mode and seeds."""
  with errors.config_fields():
    return BlockwiseModel.build(
      plan,
      shell=shell,
      layers=layers,
      fixed=fixed,
      sharing=config.blocks.sharing,
      seed=config.seed,
      fixed_seed=config.blocks.target_table_seed,
      held_blocks=held_blocks,
    )


def target_table_model(
  config, plan, *, shell, targets, layers, held_blocks=None
):
  """`blockwise_model` with a target table, `targets(trainable, rngs)`:
  trained with the shared parts (`blocks.sharing="shared"`) or fixed from
  its own seed (`independent`)."""
  shared_mode = config.blocks.sharing == "shared"

  def shell_with_targets(rngs):
    parts = shell(rngs)
    if shared_mode:
      parts["targets"] = targets(True, rngs)
    return parts

  def fixed(rngs):
    return {"targets": targets(False, rngs)}

  return blockwise_model(
    config,
    plan,
    shell=shell_with_targets,
    layers=layers,
    fixed=None if shared_mode else fixed,
    held_blocks=held_blocks,
  )


def learning_rate_fn(config) -> optax.Schedule:
  """Linear warmup, then cosine to `optimizer.min_learning_rate` or
  constant, over the run's `total_steps`."""
  o, total = config.optimizer, int(config.total_steps)
  warmup = int(o.warmup_steps)
  if warmup < 0 or warmup > total:
    raise ConfigError(
      f"optimizer.warmup_steps={warmup} must lie in [0, total_steps={total}]."
    )
  check_choice(o.schedule, LR_SCHEDULES, "optimizer.schedule")
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=o.learning_rate,
      warmup_steps=warmup,
      decay_steps=max(total, warmup + 1),
      end_value=o.min_learning_rate,
    )
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, o.learning_rate, max(warmup, 1)),
      optax.constant_schedule(o.learning_rate),
    ],
    [warmup],
  )


def optimizer_from_config(config):
  """(AdamW with the config's schedule, the schedule). Clipping is the
  trainer's (`optimizer.clip_norm`, over what a step updates)."""
  o = config.optimizer
  check_choice(o.name, OPTIMIZERS, "optimizer.name")
  schedule = learning_rate_fn(config)
  tx = optax.adamw(
    learning_rate=schedule,
    b1=o.b1,
    b2=o.b2,
    eps=o.eps,
    weight_decay=o.weight_decay,
  )
  return tx, schedule


def check_batch(config) -> None:
  if config.batch_size % (config.accumulation_steps * jax.process_count()):
    raise ConfigError(
      f"batch_size={config.batch_size} must be divisible by"
      f" accumulation_steps={config.accumulation_steps} x processes"
      f"={jax.process_count()}."
    )


def topology(config, experiment: Experiment) -> dict:
  """The config's part of a run's topology (the trainer adds the plan's and
  the layout's)."""
  out = {"method": experiment.method, "num_layers": config.model.num_layers}
  if experiment.method == "dblocks":
    out["partition"] = config.blocks.partition
  return out


def with_changes(config, changes: dict):
  """A copy of `config` with `changes` ({"blocks.num_blocks": 2, "method":
  "e2e", ...}: dotted paths to values) set."""
  import copy

  c = copy.deepcopy(config)
  with c.unlocked():
    for path, value in changes.items():
      section, _, field = path.rpartition(".")
      (c[section] if section else c)[field] = value
  return c


def one_group(config):
  """A copy of `config` on one device group that trains every block: the
  step that the compiled analyses (memory, FLOPs) look at."""
  return with_changes(config, {"parallel.block_groups": 1, "blocks.train": ()})


def make_trainer(
  config, experiment: Experiment, workdir: str | None, *, inference=False
):
  """The `Trainer` of a config's run; with `inference`, one without an
  optimizer, which restores a run's parameters whatever optimizer trained
  it (evaluation, sampling)."""
  from dblocks_jax import families
  from dblocks_jax.training.trainer import Trainer

  check_batch(config)
  tx, schedule = (None, None) if inference else optimizer_from_config(config)
  blockwise = experiment.method == "dblocks"
  with errors.config_fields():
    trainer = Trainer(
      experiment.model,
      experiment.task,
      experiment.plan,
      tx,
      batch_spec=families.get(config.model.name).batch_spec(config),
      workdir=workdir,
      seed=config.seed,
      clip_norm=config.optimizer.clip_norm,
      schedule=config.blocks.schedule if blockwise else "uniform",
      train_blocks=tuple(config.blocks.train) if blockwise else (),
      # A config written before the field (a user's family) has no offload.
      offload=blockwise and bool(config.blocks.get("offload", False)),
      block_groups=config.parallel.block_groups if blockwise else 1,
      data_shards=config.parallel.data_shards,
      accumulation_steps=config.accumulation_steps,
      learning_rate=schedule,
      total_steps=config.total_steps,
      log_every=config.log_every_steps,
      checkpoint_every=config.checkpoint_every_steps,
      keep_checkpoints=config.keep_checkpoints,
      tensorboard=config.tensorboard,
      topology=topology(config, experiment),
    )
  shards = trainer.layout.data_shards * config.accumulation_steps
  if config.batch_size % shards:
    raise ConfigError(
      f"batch_size={config.batch_size} must be divisible by the"
      f" {trainer.layout.data_shards} devices of the data axis x"
      f" accumulation_steps={config.accumulation_steps}; set"
      " parallel.data_shards or the batch size."
    )
  return trainer


def check_parallel(config) -> None:
  """Block-parallel settings need a block-wise run."""
  if config.method != "dblocks" and config.parallel.block_groups > 1:
    raise ConfigError(
      f"parallel.block_groups={config.parallel.block_groups} splits the"
      f" blocks of a block-wise run; method={config.method!r} trains one"
      " network. Set parallel.block_groups=1."
    )


# ----- Image data -----------------------------------------------------------


def data_options(config):
  from dblocks_jax.data.options import DataOptions

  return DataOptions.from_mapping(config.data)


def check_image_data(config) -> None:
  """The config's declared image shape and classes must match the data."""
  from dblocks_jax import data

  info = data.dataset_info(data_options(config))
  declared = (tuple(config.data.image_shape), config.data.num_classes)
  actual = (tuple(info.image_shape), info.num_classes)
  if declared != actual:
    raise DataError(
      f"data.image_shape={list(declared[0])} and data.num_classes="
      f"{declared[1]} do not match dataset {info.name!r}"
      f" ({list(actual[0])}, {actual[1]} classes); set them to the dataset's."
    )


def image_classes(config) -> tuple[tuple[int, int, int], int]:
  """(`data.image_shape` as a tuple, `data.num_classes`)."""
  return tuple(config.data.image_shape), config.data.num_classes


class ImageData:
  """The image families' `train_data` and `batch_spec`: augmented batches
  of images and labels, the data checked against `data.*` first."""

  def train_data(self, config, specs) -> dict:
    check_image_data(config)
    return image_train_data(config, specs)

  def batch_spec(self, config) -> dict:
    return image_batch_spec(config)


def image_train_data(config, specs) -> dict:
  """{stream: grain iterator} of augmented image batches."""
  from dblocks_jax import data

  options = data_options(config)
  return {
    stream: data.make_train_iterator(
      options, batch_size=batch_size, seed=seed, shard=shard
    )
    for stream, (seed, batch_size, shard) in specs.items()
  }


def token_train_data(config, ids, specs) -> dict:
  """{stream: grain iterator} of `data.seq_len`-token windows of `ids`
  (a split's token stream), for `Trainer.stream_specs`."""
  from dblocks_jax.data import sequences

  return {
    stream: sequences.train_iterator(
      ids,
      seq_len=config.data.seq_len,
      batch_size=batch_size,
      seed=seed,
      shard=shard,
    )
    for stream, (seed, batch_size, shard) in specs.items()
  }


def token_batch_spec(config) -> dict:
  """One global batch of token windows, as shapes."""
  shape = (config.batch_size, config.data.seq_len)
  return {"tokens": jax.ShapeDtypeStruct(shape, jnp.int32)}


def image_batch_spec(config, image_shape=None) -> dict:
  """One global batch of images and labels, as shapes."""
  h, w, c = image_shape or config.data.image_shape
  return {
    "image": jax.ShapeDtypeStruct((config.batch_size, h, w, c), jnp.float32),
    "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
  }


def end_to_end_config(config):
  """The baseline of a block-wise config: the same model trained end to end
  for the same number of layer evaluations (B x fewer, B x dearer steps;
  warmup and evaluation intervals scale alike), on one device group."""
  import copy

  baseline = copy.deepcopy(config)
  b = config.blocks.num_blocks
  with baseline.unlocked():
    baseline.method = "e2e"
    baseline.total_steps = config.total_steps // b
    baseline.optimizer.warmup_steps = config.optimizer.warmup_steps // b
    baseline.eval_every_steps = config.eval_every_steps // b
    baseline.parallel.block_groups = 1
    baseline.blocks.train = ()
  return baseline
