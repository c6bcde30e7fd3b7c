"""Shared config pieces: argument parsing, the end of every config, and
the sections every family's recipe is composed of (the run, the blocks,
precision and remat, the memory and plan modes, the EDM noise process and
its sampler, the optimizer, the smoke settings). The families' recipes are
in `images.py` (ViT, DiT) and `language.py` (masked-diffusion,
autoregressive and recurrent-depth LMs).

Every field a run reads is defined here, in those recipes or in the config
file that calls one; nothing has a default hidden in code.
"""

import ml_collections

from dblocks_jax import families


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "smoke,e2e,num_blocks=4" into a ConfigDict over `defaults` and
  the two arguments every config takes (`finish`): smoke and e2e, False.

  A bare name sets a bool default to True; `key=value` is converted to the
  type of the default.
  """
  defaults = {"smoke": False, "e2e": False, **defaults}
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(
        f"config argument {key!r} is unknown; known: {sorted(defaults)}"
      )
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() not in ("0", "false", "no") if value else True
    else:
      out[key] = kind(value)
  return out


def finish(c, args, *smoke, e2e=None) -> ml_collections.ConfigDict:
  """The end of every config: with `args.smoke`, each of the `smoke`
  settings in turn (tiny, seconds on a CPU); then with `e2e` (default
  `args.e2e`), the end-to-end baseline."""
  if args.smoke:
    for settings in smoke:
      settings(c)
  baseline = args.e2e if e2e is None else e2e
  return as_end_to_end(c) if baseline else c


def set_steps(c: ml_collections.ConfigDict, steps: int) -> None:
  """A run of `steps` baseline steps: B x as many block-wise steps (the
  same layer evaluations)."""
  c.total_steps = steps * c.blocks.num_blocks


def _run(c, *, epochs, steps_per_epoch, num_blocks, batch_size):
  """Run-level fields. Durations count baseline epochs; block-wise runs take
  B times as many (B x cheaper) steps: the same number of layer evaluations
  (the official convention, epochs x B and warmup x B)."""
  c.seed = 42  # The official seed.
  c.method = "dblocks"  # dblocks | e2e (the end-to-end baseline).
  c.steps_per_epoch = steps_per_epoch
  c.epochs = epochs
  c.total_steps = epochs * steps_per_epoch * num_blocks
  c.batch_size = batch_size
  c.accumulation_steps = 1
  c.eval_batch_size = 500
  c.log_every_steps = 100
  c.eval_every_steps = 0  # 0 = only at the end.
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 2
  c.tensorboard = False  # Needs the [tensorboard] extra.
  c.note = ""  # Why the config's settings; printed by --mode=compare.


def _blocks(c, *, num_blocks):
  c.blocks = ml_collections.ConfigDict()
  c.blocks.num_blocks = num_blocks
  c.blocks.layer_distribution = ()  # () = equal split; e.g. (2, 4, 6).
  c.blocks.partition = "equiprobable"  # equiprobable | log_uniform | explicit
  # For partition="explicit": B+1 sigmas (the masked-diffusion LM: times,
  # from 1 down to 0) in block order (block 0 is the noisiest, or most
  # masked), from sigma_max down to sigma_min.
  c.blocks.boundaries = ()
  c.blocks.gamma = 0.05  # Overlap: log-width fraction added on each side.
  c.blocks.sharing = "shared"  # shared (official) | independent
  c.blocks.schedule = "uniform"  # uniform (official) | round_robin
  # () = all blocks; (1,) = a per-block job: only block 1 is built and
  # trained (independent sharing; assemble the jobs with --mode=assemble).
  c.blocks.train = ()
  c.blocks.target_table_seed = 0  # The fixed table of the independent mode.
  # Keep the blocks not being trained (parameters and optimizer states) in
  # host memory, each moved to the device while it trains (trainer.py).
  c.blocks.offload = False

  # Block-parallel training (docs/parallel.md): G device groups along a
  # `block` mesh axis, each training its own blocks; D devices per group
  # along `data` (0 = all devices // G). 1 = the sequential trainer.
  c.parallel = ml_collections.ConfigDict()
  c.parallel.block_groups = 1
  c.parallel.data_shards = 0


def _precision_and_remat(m):
  """model.remat, model.dtype and model.param_dtype (every model)."""
  # What each layer keeps for the backward pass (dblocks_jax/nn/remat.py):
  # "none"; "full" (every layer under jax.checkpoint, saving nothing); or a
  # jax.checkpoint_policies name, e.g. "dots_saveable" (keep the matmuls'
  # outputs). Old config.json files hold True/False: read as full/none.
  m.remat = "none"
  # Mixed precision (dblocks_jax/nn/precision.py): the Linears compute in
  # `dtype` ("float32" | "bfloat16") on parameters stored in `param_dtype`;
  # norms, softmax, the loss and the EDM preconditioning stay float32.
  m.dtype = "float32"
  m.param_dtype = "float32"


def _memory_and_plan(c):
  """--mode=memory and --mode=plan (dblocks_jax/cli/memory.py, planner.py)."""
  c.memory = ml_collections.ConfigDict()
  # Besides "none", the model.remat policies --mode=memory compiles both
  # steps with (() = none).
  c.memory.remat_policies = ("full", "dots_saveable")
  c.plan = ml_collections.ConfigDict()
  # The memory of one device, e.g. "16GiB", "80GB", "512MiB".
  c.plan.device_memory = "16GiB"
  c.plan.num_blocks = (1, 2, 3, 4, 6)  # Candidate B (at most model layers).
  # Candidate examples per device per step; () = batch_size / plan.devices
  # and its first plan.batch_halvings halves.
  c.plan.per_device_batch = ()
  c.plan.batch_halvings = 3
  c.plan.remat = ("none", "dots_saveable", "full")  # Candidate model.remat.
  # FLOPs per example within this fraction of the fewest tie; the larger
  # batch, then fewer blocks, break the tie.
  c.plan.flops_tolerance = 0.01
  # Data-parallel devices of the planned run (the recommended batch_size is
  # per-device batch x devices); 0 = the devices JAX sees here.
  c.plan.devices = 0
  # The largest sequence length (tokens; image patches) whose block step and
  # end-to-end step fit each of these memories, at the first candidate
  # batch (a search over compiled steps); () = no such report.
  c.plan.seq_len_memories = ()
  c.plan.seq_len_bisections = 2  # Halvings of the last octave searched.


def recipe(model, num_train, num_blocks, epochs, batch_size):
  """What every recipe starts from: the run (epochs of `num_train`
  examples, drop_last as the official), `model.name` (frequency_dim 256,
  precision and remat), the blocks, and the memory and plan modes."""
  c = ml_collections.ConfigDict()
  _run(
    c,
    epochs=epochs,
    steps_per_epoch=num_train // batch_size,
    num_blocks=num_blocks,
    batch_size=batch_size,
  )
  c.model = ml_collections.ConfigDict({"name": model, "frequency_dim": 256})
  _precision_and_remat(c.model)
  _blocks(c, num_blocks=num_blocks)
  _memory_and_plan(c)
  return c


def edm(c, *, num_steps, **sampler):
  """The EDM noise process (the paper's settings) and its routed sampler of
  `num_steps` grid points (0 = B evaluations) with the family's `sampler`
  fields."""
  # How a block draws sigma in its range: "lognormal" (the paper: the
  # truncated log-normal) or "log_uniform" (every part of the range alike).
  c.blocks.sigma_sampling = "lognormal"
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.sigma_min = 0.002
  c.diffusion.sigma_max = 80.0
  c.diffusion.p_mean = -1.2
  c.diffusion.p_std = 1.2
  c.diffusion.sigma_data = 0.5
  c.diffusion.max_weight = 0.0  # EDM weight clamp; 0 = none (official).
  c.sampler = ml_collections.ConfigDict()
  c.sampler.num_steps = num_steps
  c.sampler.method = "euler"  # euler | heun
  c.sampler.grid = "cdf"  # cdf (official) | karras
  c.sampler.rho = 7.0
  c.sampler.update(sampler)


def optimizer(
  c, *, learning_rate, warmup_steps, weight_decay, clip_norm=1.0, **changes
):
  """AdamW, cosine decay to `min_learning_rate` after the warmup (or the
  `changes`: schedule, min_learning_rate, b2)."""
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.min_learning_rate = 5e-5
  c.optimizer.schedule = "cosine"  # cosine (to min_learning_rate) | constant
  c.optimizer.warmup_steps = warmup_steps
  c.optimizer.weight_decay = weight_decay
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.clip_norm = clip_norm  # Global norm over what a step updates.
  c.optimizer.update(changes)


def as_end_to_end(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The baseline: same model code end to end, B x fewer (B x dearer) steps
  (the rule `--mode=compare` uses, `families.end_to_end_config`)."""
  return families.end_to_end_config(c)


def smoke(c, *, eval_batch_size, warmup_steps=None, **model) -> None:
  """The run of every smoke config: a 3-layer model with 2 heads and 32
  frequencies (and the family's `model` fields), B=3 equal blocks, 12
  steps of 16 examples (`warmup_steps` of them warmup, None = the
  recipe's), logs every 4 steps, a checkpoint every 6."""
  c.model.update(num_layers=3, num_heads=2, frequency_dim=32, **model)
  c.blocks.num_blocks = 3
  c.blocks.layer_distribution = ()
  c.total_steps = 12
  c.batch_size = 16
  c.eval_batch_size = eval_batch_size
  c.log_every_steps = 4
  c.checkpoint_every_steps = 6
  if warmup_steps is not None:
    c.optimizer.warmup_steps = warmup_steps
