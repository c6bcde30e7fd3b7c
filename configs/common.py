"""Shared config pieces: argument parsing, the image datasets' facts, and
the recipes of the five families, each composed of the small sections
below: the ViT classification recipe, the DiT generation recipe and the
masked-diffusion, autoregressive and recurrent-depth LM recipes (over one
language recipe), with their smoke settings.

Every field a run reads is defined here or in the config file that calls a
recipe; nothing has a default hidden in code.
"""

import ml_collections

from dblocks_jax import families
from dblocks_jax.models import dit


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


# Each image dataset's (image_shape, num_classes, training examples).
_IMAGES = {
  "digits": ((8, 8, 1), 10, 1497),
  "fashion_mnist": ((28, 28, 1), 10, 60_000),
  "cifar10": ((32, 32, 3), 10, 50_000),
  "cifar100": ((32, 32, 3), 100, 50_000),
  "tiny_imagenet": ((64, 64, 3), 200, 100_000),
  "imagenet_latents": ((32, 32, 4), 1000, 1_281_167),
}
_IMAGES["fashion_mnist_idx"] = _IMAGES["fashion_mnist"]  # Its IDX files.


def image_data(dataset: str) -> dict:
  """The image recipes' `dataset`, `image_shape`, `num_classes` and
  `num_train` arguments for `dataset`: `vit_classification(
  **image_data("cifar100"), ...)`."""
  image_shape, num_classes, num_train = _IMAGES[dataset]
  return dict(
    dataset=dataset,
    image_shape=image_shape,
    num_classes=num_classes,
    num_train=num_train,
  )


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


def _recipe(model, num_train, num_blocks, epochs, batch_size):
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


def _edm(c, *, num_steps, **sampler):
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


def _optimizer(
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


def _data(c, *, dataset, image_shape, num_classes, normalisation):
  c.data = ml_collections.ConfigDict()
  c.data.name = dataset
  c.data.dir = ""  # "" = the dataset's default location.
  c.data.image_shape = image_shape
  c.data.num_classes = num_classes
  c.data.train_split = "train"
  c.data.eval_split = "test"
  # "dataset": (x - mean) / std with the dataset's statistics; "symmetric":
  # pixels in [-1, 1] (the data space of diffusion models).
  c.data.normalisation = normalisation
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
  """The DiffusionBlocks ViT recipe (method_spec 2.1, 4) for one dataset."""
  c = _recipe("vit", num_train, num_blocks, epochs, batch_size)
  c.model.update(
    num_layers=num_layers,
    width=width,
    num_heads=num_heads,
    mlp_dim=mlp_dim,  # Official: 3072 (HF ViTConfig default) at any width.
    patch_size=patch_size,
    cond_dim=width // 6,  # Official cond_hidden_size = hidden // 6.
    dropout=0.1,
    attention_dropout=0.1,
    layer_norm_eps=1e-12,
    # "official": SiLU after each adaLN Linear (the official ViT's quirk);
    # "dit": Linear(SiLU(cond)) as in DiT.
    modulation="official",
    # Where F is read: "label" (the official code: the noisy-label token) or
    # "cls" (the paper's text: a separate CLS token before it).
    readout_token="label",
    image_dropout=0.0,  # Zero the image in training, for guidance.
  )
  _edm(
    c,
    num_steps=0,
    guidance_scale=1.0,  # 1 = no guidance.
    # The official estimate is softmax(logits) @ E with the RAW table
    # although the targets are normalised rows; True uses the normalised
    # rows.
    normalized_table=False,
    # The denoised estimate between steps: "soft" = softmax(logits) @ table
    # (official) or "hard" = the argmax class's row.
    estimate="soft",
  )
  _optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=int(warmup_epochs * c.steps_per_epoch * num_blocks),
    weight_decay=0.01,
  )
  _data(
    c,
    dataset=dataset,
    image_shape=image_shape,
    num_classes=num_classes,
    normalisation="dataset",
  )
  return c


def set_dit_variant(c: ml_collections.ConfigDict, variant: str) -> None:
  """Sets model.variant and its layers, width, heads and patch ("L/2")."""
  layers, width, heads, patch = dit.parse_variant(variant)
  c.model.variant = variant.removeprefix("DiT-")
  c.model.num_layers, c.model.width, c.model.num_heads = layers, width, heads
  c.model.patch_size = patch


def dit_generation(
  *,
  dataset: str,
  image_shape: tuple[int, int, int],
  num_classes: int,
  num_train: int,
  variant: str,
  num_blocks: int,
  epochs: int,
  batch_size: int,
  learning_rate: float,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks DiT recipe (method_spec 2.2; DiT's train.py).

  EDM with the paper's noise settings; AdamW with DiT's constant learning
  rate, no weight decay and no clipping; 10% label dropout; 50 Euler steps
  with guidance 2.0. EMA, which DiT uses, is not part of this recipe yet.
  """
  c = _recipe("dit", num_train, num_blocks, epochs, batch_size)
  c.eval_batch_size = 250
  set_dit_variant(c, variant)
  c.model.mlp_ratio = 4
  # Reference default: 2 C output channels (DiT's learned variance), of which
  # EDM uses C; keeps the reference's parameter count and checkpoints.
  c.model.learn_sigma = True
  c.model.label_dropout = 0.1  # Null-class training, for guidance.
  # einsum: softmax(q k^T / sqrt(d)) v written out | dot_product:
  # jax.nn.dot_product_attention (cuDNN's fused attention on GPU, with q, k
  # and v in model.dtype). The same function.
  c.model.attention = "einsum"

  _edm(c, num_steps=50, guidance_scale=2.0)
  _optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=0,
    weight_decay=0.0,
    clip_norm=0.0,
    schedule="constant",
  )
  _data(
    c,
    dataset=dataset,
    image_shape=image_shape,
    num_classes=num_classes,
    normalisation="symmetric",
  )
  c.data.crop_padding = 0  # DiT: horizontal flips only.

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 10_000
  # "inception": FID Inception-v3 pool features (eval.inception_weights);
  # "classifier": features of an end-to-end ViT trained by this project on
  # the same data (eval.classifier_workdir); "none": sample, no FID.
  c.eval.feature_network = "classifier"
  c.eval.classifier_workdir = ""
  # pytorch-fid's FID weights, pt_inception-2015-12-05-6726825d.pth, from
  # github.com/mseitzer/pytorch-fid/releases (fid_weights); read without
  # torch (.npz and .safetensors with the same tensor names work too).
  c.eval.inception_weights = ""
  # The FID reference images (evaluate/reference.py): "data" (the dataset
  # itself), "encode" (encode.images centre-cropped as --mode=encode does,
  # for latent datasets) or "" (whichever the data needs).
  c.eval.reference_data = ""
  c.eval.reference_split = "test"
  c.eval.reference_cache_dir = ""  # "" = <workdir>/fid_reference.

  c.sample = ml_collections.ConfigDict()  # --mode=sample
  c.sample.num_samples = 100
  c.sample.labels = ()  # () = cycle through the classes.
  c.sample.columns = 0  # 0 = one column per class.
  c.sample.seed = 0
  return c


def paper_dit(
  dataset: str, *, variant: str, epochs: int, learning_rate: float
) -> ml_collections.ConfigDict:
  """`dit_generation` as the paper runs it on `dataset` (method_spec 2.2,
  Table 2): B=3, batch 512, FID on Inception-v3 features."""
  c = dit_generation(
    **image_data(dataset),
    variant=variant,
    num_blocks=3,
    epochs=epochs,
    batch_size=512,
    learning_rate=learning_rate,
  )
  c.eval.feature_network = "inception"
  return c


def as_end_to_end(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The baseline: same model code end to end, B x fewer (B x dearer) steps
  (the rule `--mode=compare` uses, `families.end_to_end_config`)."""
  return families.end_to_end_config(c)


def _smoke(c, *, eval_batch_size, warmup_steps=None, **model) -> None:
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


def _synthetic_smoke(c, image_shape) -> None:
  """Synthetic images of `image_shape`, 256 to train on and 64 to test."""
  c.data.name = "synthetic"
  c.data.image_shape = c.data.synthetic_image_shape = image_shape
  c.data.synthetic_num_train = 256
  c.data.synthetic_num_eval = 64


def as_smoke(c: ml_collections.ConfigDict, *, keep_data: bool = False) -> None:
  """Tiny and fast: seconds on a CPU, synthetic data of the same shape."""
  _smoke(
    c, eval_batch_size=64, warmup_steps=2, width=24, mlp_dim=48, cond_dim=8
  )
  if not keep_data:
    _synthetic_smoke(c, c.data.image_shape)


def latent_encoding(
  c: ml_collections.ConfigDict,
  *,
  images: str,
  image_size: int,
  num_classes: int,
  splits: tuple[str, ...],
) -> None:
  """`--mode=encode`: which images become the latent dataset in data.dir."""
  c.data.name = "latents"
  c.data.normalisation = "dataset"  # Latents are used as stored.
  c.encode = ml_collections.ConfigDict()
  # The image dataset to encode (any data.name that yields images).
  holder = ml_collections.ConfigDict()
  _data(
    holder,
    dataset=images,
    image_shape=(image_size, image_size, 3),
    num_classes=num_classes,
    normalisation="dataset",
  )
  c.encode.images = holder.data
  c.encode.splits = splits
  c.encode.image_size = image_size
  c.encode.flip = True  # Also encode the mirror image (DiT trains on flips).
  c.encode.shard_size = 10_000
  c.encode.batch_size = 32
  # diffusion_pytorch_model.safetensors of stabilityai/sd-vae-ft-ema; also
  # decodes samples in --mode=sample.
  c.encode.vae_weights = ""
  c.encode.vae = ml_collections.ConfigDict()  # AutoencoderKL (SD VAE).
  c.encode.vae.block_out_channels = (128, 256, 512, 512)
  c.encode.vae.layers_per_block = 2
  c.encode.vae.norm_num_groups = 32
  c.encode.vae.latent_channels = 4
  c.encode.vae.scaling_factor = 0.18215


def as_dit_smoke(c: ml_collections.ConfigDict, *, keep_data=False) -> None:
  """A tiny DiT: seconds on a CPU, synthetic data of a small shape."""
  _smoke(c, eval_batch_size=32, variant="smoke", width=32, patch_size=4)
  c.sampler.num_steps = 6
  c.eval.num_samples = 64
  c.eval.feature_network = "none"
  c.sample.num_samples = 20
  if not keep_data:
    _synthetic_smoke(c, (16, 16, c.data.image_shape[-1]))


def as_latent_smoke(c: ml_collections.ConfigDict) -> None:
  """Tiny latents: a random-weight tiny VAE over synthetic 16x16 images."""
  c.data.name = "latents"
  c.data.image_shape = (8, 8, 4)
  c.data.eval_split = "test"
  c.model.patch_size = 2
  images = c.encode.images
  images.name = "synthetic"
  images.image_shape = images.synthetic_image_shape = (16, 16, 3)
  images.num_classes = images.synthetic_num_classes = c.data.num_classes
  images.synthetic_num_train = 40
  images.synthetic_num_eval = 20
  images.eval_split = "test"
  c.eval.reference_split = "test"  # FID reference: the synthetic images.
  c.encode.splits = ("train", "test")
  c.encode.image_size = 16
  c.encode.shard_size = 16
  c.encode.batch_size = 8
  c.encode.vae.block_out_channels = (8, 16)
  c.encode.vae.layers_per_block = 1
  c.encode.vae.norm_num_groups = 4


def _language(
  model,
  *,
  corpus,
  num_train_tokens,
  seq_len,
  num_blocks,
  epochs,
  batch_size,
  learning_rate,
  warmup_steps,
  weight_decay,
):
  """The language models' recipe: epochs of `num_train_tokens` cut into
  windows of `seq_len` (the longest context, `model.max_seq_len`); AdamW
  with the family's `weight_decay`, warmup in baseline steps, cosine decay,
  clipping at 1; the corpus, and the evaluation's and sampling's seeds."""
  num_windows = num_train_tokens // seq_len
  c = _recipe(model, num_windows, num_blocks, epochs, batch_size)
  c.eval_batch_size = 64
  c.model.max_seq_len = seq_len
  _optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=warmup_steps * num_blocks,
    weight_decay=weight_decay,
  )
  c.data = ml_collections.ConfigDict()
  c.data.name = corpus  # pydocs (python3.11-doc) | text8 | lm1b (TFDS)
  # pydocs: "" = /usr/share/doc/python3.11; text8: the folder that holds
  # text8.zip (or the file itself); lm1b: the TFDS data_dir.
  c.data.dir = ""
  c.data.seq_len = seq_len
  c.data.eval_split = "test"  # test | validation (text8)
  c.eval = ml_collections.ConfigDict()
  c.eval.max_sequences = 0  # Evaluated windows; 0 = the whole split.
  c.eval.seed = 1
  c.sample = ml_collections.ConfigDict()  # --mode=sample
  c.sample.seed = 0
  return c


def mdm_language(
  *,
  corpus: str,
  num_train_characters: int,
  num_layers: int,
  width: int,
  num_heads: int,
  **language,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks masked-diffusion LM recipe (method_spec 2.3, MD4)
  on `_language`'s run (its other arguments: seq_len, num_blocks, epochs,
  batch_size, learning_rate, warmup_steps).

  MD4's linear schedule, the partition in equal decrements of alpha(t),
  gamma 0.05 by t-width (our choice: the paper does not say how gamma
  widens a t-interval); AdamW with weight decay 0.03 and warmup, cosine
  decay to zero (MD4's text8 recipe), clipping at 1.
  """
  c = _language(
    "mdm",
    corpus=corpus,
    num_train_tokens=num_train_characters,
    weight_decay=0.03,
    **language,
  )
  c.model.update(
    num_layers=num_layers, width=width, num_heads=num_heads, mlp_ratio=4
  )
  c.optimizer.min_learning_rate = 0.0
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"  # alpha(t): linear (MD4) | cosine
  c.diffusion.t_min = 1e-3  # Training never draws t below this.
  c.diffusion.time_scale = 1000.0  # The time embedder reads 1000 t.

  c.sampler = ml_collections.ConfigDict()
  c.sampler.num_steps = c.data.seq_len  # Grid points, free of B.
  c.sampler.method = "ancestral"  # MD4's ancestral unmasking.
  c.sampler.grid = "uniform"  # Equal rises of alpha per step.

  # Times per sequence in the ELBO estimate, split evenly over the blocks
  # (a multiple of B), stratified within each block's t-interval.
  c.eval.num_t_samples = 12
  c.eval.num_samples = 4  # Text samples written at each evaluation.
  c.sample.num_samples = 8
  return c


def _lm_smoke(c, *, eval_batch_size, **model) -> None:
  """A tiny language model over 32-token windows of the Python docs."""
  c.data.name = "pydocs"
  c.data.dir = ""
  c.data.seq_len = 32
  _smoke(
    c,
    eval_batch_size=eval_batch_size,
    warmup_steps=2,
    width=32,
    max_seq_len=32,
    **model,
  )


def as_mdm_smoke(c: ml_collections.ConfigDict) -> None:
  """A tiny token DiT on the Python docs: seconds on a CPU."""
  _lm_smoke(c, eval_batch_size=32)
  c.sampler.num_steps = 8
  c.eval.update(num_t_samples=3, max_sequences=64, num_samples=2)
  c.sample.num_samples = 3


def ar_language(
  *,
  vocab_size: int,
  num_layers: int,
  width: int,
  num_heads: int,
  mlp_dim: int,
  **language,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks autoregressive LM recipe (method_spec 2.4) on
  `_language`'s run (its other arguments: corpus, num_train_tokens,
  seq_len, num_blocks, epochs, batch_size, learning_rate, warmup_steps).

  A Llama-style transformer (RMSNorm, RoPE, SwiGLU) with AdaLN noise
  conditioning; the 2T layout; EDM over token embeddings with the paper's
  log-normal, equi-probable partition, gamma 0.1; B routed Euler steps per
  token, greedy. AdamW at the paper's rate and warmup; what the paper does
  not state is our choice: cosine decay to a tenth, weight decay 0.1 and
  clipping at 1 (Llama-2's), sigma per token.
  """
  c = _language("ar", weight_decay=0.1, **language)
  c.model.update(
    vocab_size=vocab_size,  # The tokenizer's pieces.
    num_layers=num_layers,
    width=width,
    num_heads=num_heads,
    mlp_dim=mlp_dim,  # SwiGLU hidden size.
    cond_dim=width,  # Width of the noise-level condition.
    norm_eps=1e-5,  # RMSNorm epsilon (Llama-2).
    rope_theta=10000.0,
  )
  c.blocks.gamma = 0.1
  _edm(
    c,
    num_steps=0,  # B steps per token.
    estimate="soft",  # soft: softmax(logits) @ E | hard: argmax row
    normalized_table=True,  # The estimate uses the target rows.
    top_p=0.95,  # The baseline's nucleus sampling.
    # Scales DiffusionBlocks' starting noise: 1 = the official chain (a
    # sampler of the model's distribution); lower sharpens, 0 is
    # deterministic.
    temperature=1.0,
  )
  # token: every noisy token draws its own sigma in the block's range;
  # sequence: one sigma per sequence.
  c.diffusion.sigma_per = "token"
  c.optimizer.min_learning_rate = c.optimizer.learning_rate / 10
  c.optimizer.b2 = 0.95  # Llama-2's.
  # A SentencePiece model; "" trains a BPE of model.vocab_size pieces on the
  # pydocs training split (LM1B needs one: Llama-2's tokenizer.model).
  c.data.tokenizer = ""
  c.eval.num_prompts = 64  # Held-out prompts; 0 = no continuations.
  c.eval.samples_per_prompt = 5
  c.eval.prompt_length = 32
  c.eval.continuation_length = 32
  # The judge of generative perplexity and MAUVE: the workdir of an ar_*
  # :e2e run on the same corpus and tokenizer ("" = no judge).
  c.eval.judge_workdir = ""
  c.eval.mauve_scaling = 2.0  # The paper's (v4); the mauve package's is 5.
  return c


# The CPU-sized language runs on the Python docs, shared by the three LM
# families' configs so that they compare: windows, epochs and optimizer.
PYDOCS_RUN = dict(
  seq_len=64, epochs=1, batch_size=32, learning_rate=1e-3, warmup_steps=200
)
# The language corpora's data and optimizer settings, shared by the
# autoregressive and recurrent-depth configs so that their runs compare
# (and share a judge): `ar_language(**PYDOCS_LM, ...)`.
PYDOCS_LM = dict(
  corpus="pydocs", num_train_tokens=3_875_713, vocab_size=2048, **PYDOCS_RUN
)
LM1B_LM = dict(  # The paper's (method_spec 2.4).
  corpus="lm1b",
  num_train_tokens=850_000_000,
  vocab_size=32000,
  seq_len=256,
  batch_size=256,
  learning_rate=3e-4,
  warmup_steps=2500,
)


def pydocs_lm_run(c: ml_collections.ConfigDict) -> None:
  """Logging, checkpoints and evaluation of the CPU-sized language runs:
  1,000 prompts x 5 (SEDD's protocol), accuracy on 1,024 test windows."""
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.eval_batch_size = 250
  c.eval.update(max_sequences=1024, num_prompts=1000)


def lm1b_lm_run(c: ml_collections.ConfigDict) -> None:
  """Logging, checkpoints and evaluation of the LM1B runs: 1,000 test
  prompts of 50 tokens, 5 continuations of 50 each."""
  c.log_every_steps = 500
  c.checkpoint_every_steps = 5000
  c.eval_batch_size = 128
  c.eval.update(
    max_sequences=4096,
    num_prompts=1000,
    prompt_length=50,
    continuation_length=50,
  )


def as_ar_smoke(c: ml_collections.ConfigDict) -> None:
  """A tiny Llama on the Python docs with a 512-piece BPE: seconds."""
  c.data.tokenizer = ""
  _lm_smoke(c, eval_batch_size=16, vocab_size=512, mlp_dim=64, cond_dim=32)
  c.eval.update(
    max_sequences=32,
    num_prompts=2,
    samples_per_prompt=2,
    prompt_length=8,
    continuation_length=8,
  )


# Huginn's default layout (method_spec 2.5): `recurrent_language(**HUGINN,
# ...)`.
HUGINN = dict(prelude_layers=2, recurrent_layers=4, coda_layers=2)


def recurrent_language(
  *,
  prelude_layers: int,
  recurrent_layers: int,
  coda_layers: int,
  mean_depth: float,
  backprop_depth: int,
  inference_depth: int,
  **ar_recipe,
) -> ml_collections.ConfigDict:
  """The recurrent-depth LM recipe (method_spec 2.5) on `ar_language`'s
  data, evaluation and optimizer (its other arguments).

  DiffusionBlocks trains the recurrent block and the coda as one block over
  the whole noise range (B=1), the prelude as a shared part; the baseline is
  Huginn's training (a log-normal Poisson depth per step, truncated
  backpropagation). K = `sampler.num_steps` is both DiffusionBlocks' Euler
  steps and the baseline's iterations at inference.
  """
  c = ar_language(
    num_layers=prelude_layers + recurrent_layers + coda_layers,
    num_blocks=1,
    **ar_recipe,
  )
  c.model.name = "recurrent"
  c.model.prelude_layers = prelude_layers  # Once, on the clean tokens.
  c.model.recurrent_layers = recurrent_layers  # Iterated, tied weights.
  c.model.coda_layers = coda_layers  # After the recurrence.
  c.model.state_std = 1.0  # The baseline's random initial state.
  c.sampler.num_steps = inference_depth  # K (iterations = Euler steps).
  c.recurrence = ml_collections.ConfigDict()  # The baseline's training.
  c.recurrence.mean_depth = mean_depth  # Log-normal Poisson mean (+ 1).
  c.recurrence.depth_sigma = 0.5  # Its log-normal spread (Huginn's).
  c.recurrence.backprop_depth = backprop_depth  # Iterations with gradients.
  return c


def as_recurrent_smoke(c: ml_collections.ConfigDict) -> None:
  """`as_ar_smoke` with one prelude, recurrent and coda layer, B=1, depth 3
  (2 backpropagated) and K = 3: seconds."""
  as_ar_smoke(c)
  c.blocks.num_blocks = 1
  c.model.prelude_layers = c.model.recurrent_layers = c.model.coda_layers = 1
  c.recurrence.mean_depth = 3.0
  c.recurrence.backprop_depth = 2
  c.sampler.num_steps = 3
