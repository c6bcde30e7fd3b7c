"""Shared config pieces: argument parsing, the ViT classification recipe and
the DiT generation recipe.

Every field a run reads is defined here or in the config file that calls
`vit_classification` or `dit_generation`; nothing has a default hidden in
code.
"""

import ml_collections

from dblocks_jax import families
from dblocks_jax.models import dit


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


def _blocks_and_diffusion(c, *, num_blocks):
  _blocks(c, num_blocks=num_blocks)
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


def _blocks(c, *, num_blocks):
  c.blocks = ml_collections.ConfigDict()
  c.blocks.num_blocks = num_blocks
  c.blocks.layer_distribution = ()  # () = equal split; e.g. (2, 4, 6).
  c.blocks.partition = "equiprobable"  # equiprobable | log_uniform | explicit
  # For partition="explicit": B+1 sigmas in block order (block 0 is the
  # noisiest), from sigma_max down to sigma_min.
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


def _sampler(c, *, num_steps, guidance_scale):
  c.sampler = ml_collections.ConfigDict()
  c.sampler.num_steps = num_steps  # 0 = B evaluations (the ViT default).
  c.sampler.method = "euler"  # euler | heun
  c.sampler.grid = "cdf"  # cdf (official) | karras
  c.sampler.rho = 7.0
  c.sampler.guidance_scale = guidance_scale  # 1 = no guidance.


def _optimizer(
  c, *, learning_rate, warmup_steps, schedule, weight_decay, clip_norm
):
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.min_learning_rate = 5e-5
  c.optimizer.schedule = schedule  # cosine (to min_learning_rate) | constant
  c.optimizer.warmup_steps = warmup_steps
  c.optimizer.weight_decay = weight_decay
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.clip_norm = clip_norm  # Global norm over what a step updates.


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
  c = ml_collections.ConfigDict()
  steps_per_epoch = num_train // batch_size  # drop_last, as the official.
  _run(
    c,
    epochs=epochs,
    steps_per_epoch=steps_per_epoch,
    num_blocks=num_blocks,
    batch_size=batch_size,
  )

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
  _precision_and_remat(c.model)
  c.model.image_dropout = 0.0  # Zero the image in training, for guidance.

  _blocks_and_diffusion(c, num_blocks=num_blocks)
  _sampler(c, num_steps=0, guidance_scale=1.0)
  # The official estimate is softmax(logits) @ E with the RAW table although
  # the targets are normalised rows; True uses the normalised rows.
  c.sampler.normalized_table = False
  # The denoised estimate between steps: "soft" = softmax(logits) @ table
  # (official) or "hard" = the argmax class's row.
  c.sampler.estimate = "soft"
  _optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=int(warmup_epochs * steps_per_epoch * num_blocks),
    schedule="cosine",
    weight_decay=0.01,
    clip_norm=1.0,
  )
  _data(
    c,
    dataset=dataset,
    image_shape=image_shape,
    num_classes=num_classes,
    normalisation="dataset",
  )
  _memory_and_plan(c)
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
  c = ml_collections.ConfigDict()
  _run(
    c,
    epochs=epochs,
    steps_per_epoch=num_train // batch_size,
    num_blocks=num_blocks,
    batch_size=batch_size,
  )
  c.eval_batch_size = 250

  c.model = ml_collections.ConfigDict()
  c.model.name = "dit"
  set_dit_variant(c, variant)
  c.model.mlp_ratio = 4
  c.model.frequency_dim = 256
  # Reference default: 2 C output channels (DiT's learned variance), of which
  # EDM uses C; keeps the reference's parameter count and checkpoints.
  c.model.learn_sigma = True
  c.model.label_dropout = 0.1  # Null-class training, for guidance.
  # einsum: softmax(q k^T / sqrt(d)) v written out | dot_product:
  # jax.nn.dot_product_attention (cuDNN's fused attention on GPU, with q, k
  # and v in model.dtype). The same function.
  c.model.attention = "einsum"
  _precision_and_remat(c.model)

  _blocks_and_diffusion(c, num_blocks=num_blocks)
  _sampler(c, num_steps=50, guidance_scale=2.0)
  _optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=0,
    schedule="constant",
    weight_decay=0.0,
    clip_norm=0.0,
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

  _memory_and_plan(c)
  return c


def as_end_to_end(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The baseline: same model code end to end, B x fewer (B x dearer) steps
  (the rule `--mode=compare` uses, `families.end_to_end_config`)."""
  return families.end_to_end_config(c)


def _smoke_run(c: ml_collections.ConfigDict, *, eval_batch_size: int) -> None:
  """The run of every smoke config: B=3 equal blocks, 12 steps of 16
  examples, logs every 4 steps, a checkpoint every 6."""
  c.blocks.num_blocks = 3
  c.blocks.layer_distribution = ()
  c.total_steps = 12
  c.batch_size = 16
  c.eval_batch_size = eval_batch_size
  c.log_every_steps = 4
  c.checkpoint_every_steps = 6


def as_smoke(c: ml_collections.ConfigDict, *, keep_data: bool = False) -> None:
  """Tiny and fast: seconds on a CPU, synthetic data of the same shape."""
  c.model.num_layers = 3
  c.model.width = 24
  c.model.num_heads = 2
  c.model.mlp_dim = 48
  c.model.cond_dim = 8
  c.model.frequency_dim = 32
  _smoke_run(c, eval_batch_size=64)
  c.optimizer.warmup_steps = 2
  if not keep_data:
    c.data.name = "synthetic"
    c.data.synthetic_num_train = 256
    c.data.synthetic_num_eval = 64


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
  c.model.variant = "smoke"
  c.model.num_layers = 3
  c.model.width = 32
  c.model.num_heads = 2
  c.model.frequency_dim = 32
  c.model.patch_size = 4
  _smoke_run(c, eval_batch_size=32)
  c.sampler.num_steps = 6
  c.eval.num_samples = 64
  c.eval.feature_network = "none"
  c.sample.num_samples = 20
  if not keep_data:
    c.data.name = "synthetic"
    c.data.image_shape = (16, 16, c.data.image_shape[-1])
    c.data.synthetic_image_shape = c.data.image_shape
    c.data.synthetic_num_train = 256
    c.data.synthetic_num_eval = 64


def as_latent_smoke(c: ml_collections.ConfigDict) -> None:
  """Tiny latents: a random-weight tiny VAE over synthetic 16x16 images."""
  c.data.name = "latents"
  c.data.image_shape = (8, 8, 4)
  c.data.eval_split = "test"
  c.model.patch_size = 2
  c.encode.images.name = "synthetic"
  c.encode.images.image_shape = (16, 16, 3)
  c.encode.images.synthetic_image_shape = (16, 16, 3)
  c.encode.images.num_classes = c.data.num_classes
  c.encode.images.synthetic_num_classes = c.data.num_classes
  c.encode.images.synthetic_num_train = 40
  c.encode.images.synthetic_num_eval = 20
  c.encode.images.eval_split = "test"
  c.eval.reference_split = "test"  # FID reference: the synthetic images.
  c.encode.splits = ("train", "test")
  c.encode.image_size = 16
  c.encode.shard_size = 16
  c.encode.batch_size = 8
  c.encode.vae.block_out_channels = (8, 16)
  c.encode.vae.layers_per_block = 1
  c.encode.vae.norm_num_groups = 4


def mdm_language(
  *,
  corpus: str,
  num_train_characters: int,
  num_layers: int,
  width: int,
  num_heads: int,
  seq_len: int,
  num_blocks: int,
  epochs: int,
  batch_size: int,
  learning_rate: float,
  warmup_steps: int,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks masked-diffusion LM recipe (method_spec 2.3, MD4).

  MD4's linear schedule, the partition in equal decrements of alpha(t),
  gamma 0.05 by t-width (our choice: the paper does not say how gamma
  widens a t-interval); AdamW with weight decay 0.03 and warmup, cosine
  decay to zero (MD4's text8 recipe), clipping at 1.
  """
  c = ml_collections.ConfigDict()
  steps_per_epoch = num_train_characters // seq_len // batch_size
  _run(
    c,
    epochs=epochs,
    steps_per_epoch=steps_per_epoch,
    num_blocks=num_blocks,
    batch_size=batch_size,
  )
  c.eval_batch_size = 64

  c.model = ml_collections.ConfigDict()
  c.model.name = "mdm"
  c.model.num_layers = num_layers
  c.model.width = width
  c.model.num_heads = num_heads
  c.model.mlp_ratio = 4
  c.model.frequency_dim = 256
  c.model.max_seq_len = seq_len  # Rows of the learned position table.
  _precision_and_remat(c.model)

  _blocks(c, num_blocks=num_blocks)
  # For partition="explicit": B+1 times in block order (block 0 is the most
  # masked), from 1 down to 0.
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "linear"  # alpha(t): linear (MD4) | cosine
  c.diffusion.t_min = 1e-3  # Training never draws t below this.
  c.diffusion.time_scale = 1000.0  # The time embedder reads 1000 t.

  c.sampler = ml_collections.ConfigDict()
  c.sampler.num_steps = seq_len  # Grid points, free of B.
  c.sampler.method = "ancestral"  # MD4's ancestral unmasking.
  c.sampler.grid = "uniform"  # Equal rises of alpha per step.

  _optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=warmup_steps * num_blocks,
    schedule="cosine",
    weight_decay=0.03,
    clip_norm=1.0,
  )
  c.optimizer.min_learning_rate = 0.0

  c.data = ml_collections.ConfigDict()
  c.data.name = corpus  # pydocs (python3.11-doc) | text8 (text8.zip)
  # pydocs: "" = /usr/share/doc/python3.11; text8: the folder that holds
  # text8.zip (or the file itself).
  c.data.dir = ""
  c.data.seq_len = seq_len
  c.data.eval_split = "test"  # test | validation

  c.eval = ml_collections.ConfigDict()
  # Times per sequence in the ELBO estimate, split evenly over the blocks
  # (a multiple of B), stratified within each block's t-interval.
  c.eval.num_t_samples = 12
  c.eval.max_sequences = 0  # 0 = the whole split.
  c.eval.num_samples = 4  # Text samples written at each evaluation.
  c.eval.seed = 1

  c.sample = ml_collections.ConfigDict()  # --mode=sample
  c.sample.num_samples = 8
  c.sample.seed = 0

  _memory_and_plan(c)
  return c


def as_mdm_smoke(c: ml_collections.ConfigDict) -> None:
  """A tiny token DiT on the Python docs: seconds on a CPU."""
  c.data.name = "pydocs"
  c.data.dir = ""
  c.model.num_layers = 3
  c.model.width = 32
  c.model.num_heads = 2
  c.model.frequency_dim = 32
  c.model.max_seq_len = 32
  c.data.seq_len = 32
  _smoke_run(c, eval_batch_size=32)
  c.optimizer.warmup_steps = 2
  c.sampler.num_steps = 8
  c.eval.num_t_samples = 3
  c.eval.max_sequences = 64
  c.eval.num_samples = 2
  c.sample.num_samples = 3


def ar_language(
  *,
  corpus: str,
  num_train_tokens: int,
  vocab_size: int,
  num_layers: int,
  width: int,
  num_heads: int,
  mlp_dim: int,
  seq_len: int,
  num_blocks: int,
  epochs: int,
  batch_size: int,
  learning_rate: float,
  warmup_steps: int,
) -> ml_collections.ConfigDict:
  """The DiffusionBlocks autoregressive LM recipe (method_spec 2.4).

  A Llama-style transformer (RMSNorm, RoPE, SwiGLU) with AdaLN noise
  conditioning; the 2T layout; EDM over token embeddings with the paper's
  log-normal, equi-probable partition, gamma 0.1; B routed Euler steps per
  token, greedy. AdamW at the paper's rate and warmup; what the paper does
  not state is our choice: cosine decay to a tenth, weight decay 0.1 and
  clipping at 1 (Llama-2's), sigma per token.
  """
  c = ml_collections.ConfigDict()
  _run(
    c,
    epochs=epochs,
    steps_per_epoch=num_train_tokens // seq_len // batch_size,
    num_blocks=num_blocks,
    batch_size=batch_size,
  )
  c.eval_batch_size = 64

  c.model = ml_collections.ConfigDict()
  c.model.name = "ar"
  c.model.vocab_size = vocab_size  # The tokenizer's pieces.
  c.model.max_seq_len = seq_len  # The longest context generation accepts.
  c.model.num_layers = num_layers
  c.model.width = width
  c.model.num_heads = num_heads
  c.model.mlp_dim = mlp_dim  # SwiGLU hidden size.
  c.model.cond_dim = width  # Width of the noise-level condition.
  c.model.frequency_dim = 256
  c.model.norm_eps = 1e-5  # RMSNorm epsilon (Llama-2).
  c.model.rope_theta = 10000.0
  _precision_and_remat(c.model)

  _blocks_and_diffusion(c, num_blocks=num_blocks)
  c.blocks.gamma = 0.1
  # token: every noisy token draws its own sigma in the block's range;
  # sequence: one sigma per sequence.
  c.diffusion.sigma_per = "token"

  _sampler(c, num_steps=0, guidance_scale=1.0)  # B steps per token.
  del c.sampler.guidance_scale
  c.sampler.estimate = "soft"  # soft: softmax(logits) @ E | hard: argmax row
  c.sampler.normalized_table = True  # The estimate uses the target rows.
  c.sampler.top_p = 0.95  # The baseline's nucleus sampling.
  # Scales DiffusionBlocks' starting noise: 1 = the official chain (a
  # sampler of the model's distribution); lower sharpens, 0 is deterministic.
  c.sampler.temperature = 1.0

  _optimizer(
    c,
    learning_rate=learning_rate,
    warmup_steps=warmup_steps * num_blocks,
    schedule="cosine",
    weight_decay=0.1,
    clip_norm=1.0,
  )
  c.optimizer.min_learning_rate = learning_rate / 10
  c.optimizer.b2 = 0.95  # Llama-2's.

  c.data = ml_collections.ConfigDict()
  c.data.name = corpus  # pydocs (python3.11-doc) | lm1b (TFDS)
  # pydocs: "" = /usr/share/doc/python3.11; lm1b: the TFDS data_dir.
  c.data.dir = ""
  # A SentencePiece model; "" trains a BPE of model.vocab_size pieces on the
  # pydocs training split (LM1B needs one: Llama-2's tokenizer.model).
  c.data.tokenizer = ""
  c.data.seq_len = seq_len
  c.data.eval_split = "test"

  c.eval = ml_collections.ConfigDict()
  c.eval.max_sequences = 0  # Next-token accuracy windows; 0 = the split.
  c.eval.num_prompts = 64  # Held-out prompts; 0 = no continuations.
  c.eval.samples_per_prompt = 5
  c.eval.prompt_length = 32
  c.eval.continuation_length = 32
  c.eval.seed = 1
  # The judge of generative perplexity and MAUVE: the workdir of an ar_*
  # :e2e run on the same corpus and tokenizer ("" = no judge).
  c.eval.judge_workdir = ""
  c.eval.mauve_scaling = 2.0  # The paper's (v4); the mauve package's is 5.

  c.sample = ml_collections.ConfigDict()  # --mode=sample
  c.sample.seed = 0

  _memory_and_plan(c)
  return c


# The language corpora's data and optimizer settings, shared by the
# autoregressive and recurrent-depth configs so that their runs compare
# (and share a judge): `ar_language(**PYDOCS_LM, ...)`.
PYDOCS_LM = dict(
  corpus="pydocs",
  num_train_tokens=3_875_713,
  vocab_size=2048,
  seq_len=64,
  epochs=1,
  batch_size=32,
  learning_rate=1e-3,
  warmup_steps=200,
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
  c.eval.max_sequences = 1024
  c.eval.num_prompts = 1000
  c.eval_batch_size = 250


def lm1b_lm_run(c: ml_collections.ConfigDict) -> None:
  """Logging, checkpoints and evaluation of the LM1B runs: 1,000 test
  prompts of 50 tokens, 5 continuations of 50 each."""
  c.log_every_steps = 500
  c.checkpoint_every_steps = 5000
  c.eval_batch_size = 128
  c.eval.max_sequences = 4096
  c.eval.num_prompts = 1000
  c.eval.prompt_length = 50
  c.eval.continuation_length = 50


def as_ar_smoke(c: ml_collections.ConfigDict) -> None:
  """A tiny Llama on the Python docs with a 512-piece BPE: seconds."""
  c.data.name = "pydocs"
  c.data.dir = ""
  c.data.tokenizer = ""
  c.model.vocab_size = 512
  c.model.num_layers = 3
  c.model.width = 32
  c.model.num_heads = 2
  c.model.mlp_dim = 64
  c.model.cond_dim = 32
  c.model.frequency_dim = 32
  c.model.max_seq_len = 32
  c.data.seq_len = 32
  _smoke_run(c, eval_batch_size=16)
  c.optimizer.warmup_steps = 2
  c.eval.max_sequences = 32
  c.eval.num_prompts = 2
  c.eval.samples_per_prompt = 2
  c.eval.prompt_length = 8
  c.eval.continuation_length = 8


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
