"""ogbg-molpcba loss and mean average precision, against independent computations (numpy
float64 formulas, scikit-learn's `average_precision_score` in OGB's evaluation loop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from workloads.ogbg_molpcba import metrics
from workloads.ogbg_molpcba.workload import binary_cross_entropy_with_mask


def _ogb_evaluator_map(labels_with_nan: np.ndarray, scores: np.ndarray) -> float:
  """OGB's `Evaluator._eval_ap` for ogbg-molpcba: sklearn AP on the labelled rows of each task
  with both classes, then the mean."""
  precisions = []
  for task in range(labels_with_nan.shape[1]):
    column = labels_with_nan[:, task]
    if np.sum(column == 1) > 0 and np.sum(column == 0) > 0:
      labelled = column == column
      precisions.append(average_precision_score(column[labelled], scores[labelled, task]))
  return float(np.mean(precisions))


@pytest.mark.parametrize('decimals', [0, 1, 4])  # 0 and 1 create many tied scores.
def test_average_precision_matches_sklearn(decimals):
  rng = np.random.default_rng(decimals)
  for _ in range(50):
    n = int(rng.integers(2, 80))
    labels = rng.integers(0, 2, n)
    labels[0] = 1
    scores = np.round(rng.normal(size=n), decimals)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12)


def test_mean_average_precision_matches_ogb_evaluator_and_skips_one_class_tasks():
  rng = np.random.default_rng(0)
  n, num_tasks = 300, 12
  labels = (rng.random((n, num_tasks)) < 0.2).astype(np.float64)
  labels[rng.random((n, num_tasks)) < 0.3] = np.nan  # Missing labels.
  labels[:, 3] = np.where(np.isnan(labels[:, 3]), np.nan, 0.0)  # Only negatives: skipped.
  # Only positives among the labelled rows: skipped (AlgoPerf's test, which sees the missing
  # labels as zeros, would keep it).
  labels[:, 7] = np.where(np.isnan(labels[:, 7]), np.nan, 1.0)
  scores = rng.normal(size=(n, num_tasks)) + 2 * np.nan_to_num(labels)
  mask = ~np.isnan(labels)
  result = metrics.mean_average_precision(np.nan_to_num(labels), scores, mask)
  assert result == pytest.approx(_ogb_evaluator_map(labels, scores), abs=1e-12)
  kept = [t for t in range(num_tasks) if t not in (3, 7)]
  assert result == pytest.approx(_ogb_evaluator_map(labels[:, kept], scores[:, kept]), abs=1e-12)


def test_mean_average_precision_is_nan_without_evaluable_tasks():
  labels = np.array([[1.0, 0.0], [1.0, 0.0]])
  assert np.isnan(metrics.mean_average_precision(labels, np.zeros((2, 2)), np.ones((2, 2))))


def test_ranking_logits_equals_ranking_probabilities():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, (200, 4)).astype(np.float64)
  logits = rng.normal(scale=3.0, size=(200, 4))
  probabilities = 1.0 / (1.0 + np.exp(-logits))
  mask = np.ones_like(labels)
  assert metrics.mean_average_precision(labels, logits, mask) == pytest.approx(
      metrics.mean_average_precision(labels, probabilities, mask), abs=1e-12)


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_masked_sigmoid_cross_entropy_matches_numpy(label_smoothing):
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, (6, 5)).astype(np.float32)
  logits = rng.normal(scale=4.0, size=(6, 5)).astype(np.float32)
  mask = (rng.random((6, 5)) < 0.7).astype(np.float32)
  losses = binary_cross_entropy_with_mask(jnp.asarray(labels), jnp.asarray(logits),
                                          jnp.asarray(mask), label_smoothing)
  smoothed = labels * (1 - label_smoothing) + label_smoothing / labels.shape[1]
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  expected = -(smoothed * np.log(p) + (1 - smoothed) * np.log(1 - p)) * mask
  np.testing.assert_allclose(np.asarray(losses), expected, rtol=1e-5, atol=1e-6)


def test_masked_nan_labels_give_finite_loss_and_gradient():
  labels = jnp.array([[1.0, jnp.nan], [0.0, 1.0]])
  mask = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  logits = jnp.array([[0.3, -2.0], [50.0, -50.0]])

  def total(x):
    return binary_cross_entropy_with_mask(labels, x, mask).sum()

  value, grad = jax.value_and_grad(total)(logits)
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
  assert float(grad[0, 1]) == 0.0
  with pytest.raises(ValueError, match='shape mismatch'):
    binary_cross_entropy_with_mask(labels, logits[:, :1], mask)
