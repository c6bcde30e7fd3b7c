"""Model families: ViT classification (DiT and LMs follow)."""

from dblocks_jax.models import vit
from dblocks_jax.models.vit import BaselineViT, DiffusionReadout, ViTStem

__all__ = ["BaselineViT", "DiffusionReadout", "ViTStem", "vit"]
