"""Shared config pieces: argument parsing and the ViT classification base.

Every field a run reads is defined here or in the config file that calls
`vit_classification`; nothing has a default hidden in code.
"""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "smoke,e2e,num_blocks=4" into a ConfigDict over `defaults`.

  A bare name sets a bool default to True; `key=value` is converted to the
  type of the default.
  """
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


def vit_classification(
  *,
  dataset: str,
  image_shape: tuple[int, int, int],
  num_classes: int,
  num_train: int,
  num_layers: int,
  width: int,
  num_heads: int,
  mlp_dim: int,
  patch_size: int,
  num_blocks: int,
  epochs: int,
  batch_size: int,
  learning_rate: float,
  warmup_epochs: float,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks ViT recipe (method_spec 2.1, 4) for one dataset.

  Durations are in epochs of the end-to-end baseline; the block-wise run takes
  B times as many (B x cheaper) steps, so both see the same number of layer
  evaluations (the official convention, epochs x B and warmup x B).
  """
  c = ml_collections.ConfigDict()
  c.seed = 42  # The official seed.
  c.method = "dblocks"  # dblocks | e2e (the end-to-end baseline).

  steps_per_epoch = num_train // batch_size  # drop_last, as the official.
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

  c.model = ml_collections.ConfigDict()
  c.model.name = "vit"
  c.model.num_layers = num_layers
  c.model.width = width
  c.model.num_heads = num_heads
  c.model.mlp_dim = (
    mlp_dim  # Official: 3072 (HF ViTConfig default) at any width.
  )
  c.model.patch_size = patch_size
  c.model.cond_dim = width // 6  # Official cond_hidden_size = hidden // 6.
  c.model.frequency_dim = 256
  c.model.dropout = 0.1
  c.model.attention_dropout = 0.1
  c.model.layer_norm_eps = 1e-12
  # "official": SiLU after each adaLN Linear (the official ViT's quirk);
  # "dit": Linear(SiLU(cond)) as in DiT.
  c.model.modulation = "official"
  # Where F is read: "label" (the official code: the noisy-label token) or
  # "cls" (the paper's text: a separate CLS token before it).
  c.model.readout_token = "label"
  c.model.remat = False  # jax.checkpoint every layer.
  c.model.image_dropout = 0.0  # Zero the image in training, for guidance.

  c.blocks = ml_collections.ConfigDict()
  c.blocks.num_blocks = num_blocks
  c.blocks.layer_distribution = ()  # () = equal split; e.g. (2, 4, 6).
  c.blocks.partition = "equiprobable"  # equiprobable | log_uniform | explicit
  c.blocks.boundaries = ()  # For partition="explicit": B+1 ascending sigmas.
  c.blocks.gamma = 0.05  # Overlap: log-width fraction added on each side.
  c.blocks.sharing = "shared"  # shared (official) | independent
  c.blocks.schedule = "uniform"  # uniform (official) | round_robin
  c.blocks.train = ()  # () = all blocks; (1,) = train only block 1.
  c.blocks.target_table_seed = 0  # The fixed table of the independent mode.

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.sigma_min = 0.002
  c.diffusion.sigma_max = 80.0
  c.diffusion.p_mean = -1.2
  c.diffusion.p_std = 1.2
  c.diffusion.sigma_data = 0.5
  c.diffusion.max_weight = 0.0  # EDM weight clamp; 0 = none (official).

  c.sampler = ml_collections.ConfigDict()
  c.sampler.num_steps = 0  # 0 = B evaluations (official default).
  c.sampler.method = "euler"  # euler | heun
  c.sampler.grid = "cdf"  # cdf (official) | karras
  c.sampler.rho = 7.0
  c.sampler.guidance_scale = 1.0  # 1 = no classifier-free guidance.
  # The official estimate is softmax(logits) @ E with the RAW table although
  # the targets are normalised rows; True uses the normalised rows.
  c.sampler.normalized_table = False
  # The denoised estimate between steps: "soft" = softmax(logits) @ table
  # (official) or "hard" = the argmax class's row.
  c.sampler.estimate = "soft"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.min_learning_rate = 5e-5
  c.optimizer.schedule = "cosine"  # cosine (to min_learning_rate) | constant
  c.optimizer.warmup_steps = int(warmup_epochs * steps_per_epoch * num_blocks)
  c.optimizer.weight_decay = 0.01
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.clip_norm = 1.0  # Global norm over what the step updates.

  c.data = ml_collections.ConfigDict()
  c.data.name = dataset
  c.data.dir = ""  # "" = the dataset's default location.
  c.data.image_shape = image_shape
  c.data.num_classes = num_classes
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.crop_padding = 4
  c.data.flip = True
  c.data.random_resized_crop = False
  c.data.randaugment = False
  c.data.randaugment_num_ops = 2
  c.data.randaugment_magnitude = 9
  c.data.num_workers = 0
  c.data.synthetic_num_classes = num_classes
  c.data.synthetic_image_shape = image_shape
  c.data.synthetic_num_train = 2048
  c.data.synthetic_num_eval = 256

  c.memory = ml_collections.ConfigDict()
  c.memory.include_remat = True  # Also report both steps with jax.checkpoint.
  return c


def as_end_to_end(c: ml_collections.ConfigDict) -> None:
  """The baseline: same model code end to end, B x fewer (B x dearer) steps."""
  b = c.blocks.num_blocks
  c.method = "e2e"
  c.total_steps = c.total_steps // b
  c.optimizer.warmup_steps = c.optimizer.warmup_steps // b


def as_smoke(c: ml_collections.ConfigDict, *, keep_data: bool = False) -> None:
  """Tiny and fast: seconds on a CPU, synthetic data of the same shape."""
  c.model.num_layers = 3
  c.model.width = 24
  c.model.num_heads = 2
  c.model.mlp_dim = 48
  c.model.cond_dim = 8
  c.model.frequency_dim = 32
  c.blocks.num_blocks = 3
  c.blocks.layer_distribution = ()
  c.total_steps = 12
  c.batch_size = 16
  c.eval_batch_size = 64
  c.log_every_steps = 4
  c.checkpoint_every_steps = 6
  c.optimizer.warmup_steps = 2
  if not keep_data:
    c.data.name = "synthetic"
    c.data.synthetic_num_train = 256
    c.data.synthetic_num_eval = 64
