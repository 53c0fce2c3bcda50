"""Mean average precision over tasks, as OGB's `Evaluator` for ogbg-molpcba computes it.

For task t, with the valid (labelled, non-padding) examples only: when they contain at least
one positive and one negative, the average precision

  AP_t = sum_k (R_k - R_{k-1}) P_k

over the distinct score thresholds k in decreasing order (tied scores form one threshold),
where P_k and R_k are the precision and recall of predicting positive for scores >= threshold k
(R_0 = 0). This is scikit-learn's `average_precision_score`, which OGB calls. mAP is the mean of
AP_t over the tasks that have both classes; NaN when none has.

AlgoPerf applies a float32 sigmoid before ranking; AP depends on the order of the scores only,
so ranking the logits gives the same value without the ties a saturated float32 sigmoid creates.
AlgoPerf also tests "both classes" on all rows, padding included; OGB (and this module) tests the
valid rows.
"""

from __future__ import annotations

import numpy as np


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
  """Average precision of one task.

  Args:
    labels: [n] in {0, 1}, with at least one 1.
    scores: [n] real; higher means more likely positive.

  Returns:
    sum over distinct thresholds of (recall increase) x precision.
  """
  order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
  sorted_scores = np.asarray(scores, np.float64)[order]
  sorted_labels = np.asarray(labels, np.float64)[order]
  # Last position of each run of tied scores: the threshold boundaries.
  boundaries = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
  true_positives = np.cumsum(sorted_labels)[boundaries]
  predicted_positives = boundaries + 1.0
  precision = true_positives / predicted_positives
  recall = true_positives / true_positives[-1]
  recall_increase = np.diff(np.r_[0.0, recall])
  return float(np.sum(recall_increase * precision))


def mean_average_precision(labels: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> float:
  """OGB's ogbg-molpcba metric.

  Args:
    labels: [n, T] in {0, 1} (values where `mask` is 0 are ignored).
    scores: [n, T] logits or probabilities.
    mask: [n, T], nonzero for valid labels.

  Returns:
    mean over tasks with both classes among their valid labels of `average_precision`; NaN
    when no task has both.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  valid = np.asarray(mask) != 0
  precisions = []
  for task in range(labels.shape[1]):
    task_labels = labels[valid[:, task], task]
    if np.any(task_labels == 1) and np.any(task_labels == 0):
      precisions.append(average_precision(task_labels, scores[valid[:, task], task]))
  return float(np.mean(precisions)) if precisions else float('nan')
