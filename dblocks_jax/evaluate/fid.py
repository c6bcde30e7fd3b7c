"""Frechet distance between feature statistics (FID with any feature net).

FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) over the features
of generated and reference images (Heusel et al. 2017). The trace of the
matrix square root is computed as Tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2)), whose
argument is symmetric positive semi-definite, so it needs eigenvalues only.
"""

import hashlib
import json
import os

import numpy as np
from absl import logging


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """features: [n, d] -> (mean [d], covariance [d, d]), float64, ddof 1."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"need [n >= 2, d] features, got {features.shape}")
  return features.mean(0), np.cov(features, rowvar=False)


class RunningStatistics:
  """Mean and covariance of features that arrive in batches, in O(d^2)
  memory (a reference set of a million images never sits in memory).

  Sums are float64 and taken about a shift (the first batch's mean), so the
  covariance does not lose precision to large means; `result()` equals
  `statistics` of all the batches concatenated.
  """

  def __init__(self):
    self.count = 0
    self._shift = self._sum = self._outer = None

  def update(self, features: np.ndarray) -> None:
    """features: [b, d]."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f"need [batch, d] features, got {x.shape}")
    if self._shift is None:
      self._shift = x.mean(0)
      self._sum = np.zeros_like(self._shift)
      self._outer = np.zeros((x.shape[1],) * 2)
    x = x - self._shift
    self.count += len(x)
    self._sum += x.sum(0)
    self._outer += x.T @ x

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    """(mean [d], covariance [d, d]), float64, ddof 1."""
    if self.count < 2:
      raise ValueError(f"need at least 2 features, got {self.count}")
    centred_mean = self._sum / self.count
    cov = (self._outer - self.count * np.outer(centred_mean, centred_mean)) / (
      self.count - 1
    )
    return self._shift + centred_mean, cov


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """Frechet distance between N(mu1, cov1) and N(mu2, cov2)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  root1 = _psd_sqrt(cov1)
  inner = root1 @ cov2 @ root1
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0, None)))
  distance = (
    np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt
  )
  return float(max(distance, 0.0))


def cache_path(cache_dir: str, description: dict) -> str:
  """The file of the statistics that `description` identifies."""
  text = json.dumps(description, sort_keys=True)
  name = hashlib.sha256(text.encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f"reference_{name}.npz")


def cached_reference_statistics(cache_dir: str, description: dict, compute):
  """Loads reference (mean, cov) from the cache or computes and stores them.

  Args:
    cache_dir: directory of cached statistics.
    description: JSON-able identity of the statistics (feature network,
      dataset, split, image shape); its hash names the file.
    compute: `() -> (mean, cov)`, called on a cache miss.

  Returns:
    (mean, cov, path of the cached file).
  """
  text = json.dumps(description, sort_keys=True)
  path = cache_path(cache_dir, description)
  if os.path.exists(path):
    with np.load(path) as cached:
      return cached["mean"], cached["cov"], path
  logging.info("Computing reference statistics for %s.", text)
  mean, cov = compute()
  os.makedirs(cache_dir, exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, mean=mean, cov=cov, description=text)
  os.replace(tmp, path)
  return mean, cov, path
