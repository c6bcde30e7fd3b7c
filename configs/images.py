"""The image recipes: ViT classification and DiT generation (pixels or
SD-VAE latents), the image datasets' facts and their smoke settings."""

import ml_collections

from configs import common
from dblocks_jax.models import dit

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
  c = common.recipe("vit", num_train, num_blocks, epochs, batch_size)
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
    # The attention: dense (the scores written out) | chunked
    # (nn.chunked_attention: none written out; no attention dropout) | auto
    # (cuDNN's fused attention on GPU where the mask allows it, else
    # chunked; dense while attention_dropout > 0). Dense: a ViT's few
    # tokens (65 on CIFAR) make the scores a small share of its memory, and
    # the recipe's attention dropout needs it.
    attention_impl="dense",
  )
  common.edm(
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
  common.optimizer(
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
  c = common.recipe("dit", num_train, num_blocks, epochs, batch_size)
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
  # The attention's path: dense (model.attention's form) | chunked
  # (nn.chunked_attention: the scores never written out) | auto (cuDNN's
  # fused attention on GPU where it can run, else chunked: DiT-L/2's
  # block-step temporaries fall by a fifth, its results are the same to
  # float rounding). Forward-mode autodiff (jax.jvp) needs dense.
  c.model.attention_impl = "auto"

  common.edm(c, num_steps=50, guidance_scale=2.0)
  common.optimizer(
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


def _synthetic_smoke(c, image_shape) -> None:
  """Synthetic images of `image_shape`, 256 to train on and 64 to test."""
  c.data.name = "synthetic"
  c.data.image_shape = c.data.synthetic_image_shape = image_shape
  c.data.synthetic_num_train = 256
  c.data.synthetic_num_eval = 64


def as_smoke(c: ml_collections.ConfigDict, *, keep_data: bool = False) -> None:
  """Tiny and fast: seconds on a CPU, synthetic data of the same shape."""
  common.smoke(
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
  common.smoke(c, eval_batch_size=32, variant="smoke", width=32, patch_size=4)
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
