"""What the image workloads' configs (ImageNet ViT, CIFAR-10 WRN) share.

Every image config has the fields `image_classification.ImageClassificationWorkload` and
`config_workload.ConfigWorkload` read: `model` (the Flax model's keyword arguments),
`image_size`, `dropout_rate`, `data_source`, batch sizes, split sizes, targets and budgets. The
`small` and `tiny` configs of both read the embedded 32x32 digits (`image_data.py`); the `tiny`
ones, for tests, share their targets and budgets.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import ml_collections

from workloads import image_data

DIGITS_SPLIT_SIZES = image_data.split_sizes(image_data.NUM_EXAMPLES)

# Tiny (tests only): well above chance (0.1).
TINY_VALIDATION_TARGET = 0.5
TINY_TEST_TARGET = 0.5
TINY_STEP_HINT = 200
TINY_MAX_RUNTIME_SEC = 120
TINY_EVAL_BATCH_SIZE = 64
TINY_EVAL_PERIOD_TIME_SEC = 10
TINY_EVAL_PERIOD_STEPS = 20
# Small: evaluation every 10 steps (60 s of wall-clock where no step period is used). The step
# period is the resolution of steps-to-target: Nesterov reaches the WRN small target near step
# 150 and the ViT's near step 300, so at 10 steps a 20 % difference (30 / 60 steps) spans 3 / 6
# evaluations (at the former 50 every WRN ratio was 1.00 or 0.67). An evaluation is cheap: 256
# eval_train + 180 validation + 180 test images, forward only, one batch of 256 per split (about
# 3 training steps' compute at batch 64), and off the submission's clock.
SMALL_EVAL_BATCH_SIZE = 256
SMALL_EVAL_PERIOD_TIME_SEC = 60
SMALL_EVAL_PERIOD_STEPS = 10


def image_config(*, model: Dict[str, Any], image_size: int, data_source: str, batch_size: int,
                 eval_batch_size: int, num_train_examples: int, num_validation_examples: int,
                 num_test_examples: int, validation_target_value: float,
                 test_target_value: float, step_hint: int, max_allowed_runtime_sec: int,
                 eval_period_time_sec: int, eval_period_steps: Optional[int],
                 dropout_rate: float = 0.0, **extra: Any) -> ml_collections.ConfigDict:
  """An image workload's config: the shared fields, plus the workload's own in `extra`."""
  return ml_collections.ConfigDict(dict(
      model=model, image_size=image_size, dropout_rate=dropout_rate, data_source=data_source,
      batch_size=batch_size, eval_batch_size=eval_batch_size,
      num_train_examples=num_train_examples, num_validation_examples=num_validation_examples,
      num_test_examples=num_test_examples, validation_target_value=validation_target_value,
      test_target_value=test_target_value, step_hint=step_hint,
      max_allowed_runtime_sec=max_allowed_runtime_sec, eval_period_time_sec=eval_period_time_sec,
      eval_period_steps=eval_period_steps, **extra))


def digits_config(*, model: Dict[str, Any], batch_size: int, eval_batch_size: int,
                  validation_target_value: float, test_target_value: float, step_hint: int,
                  max_allowed_runtime_sec: int, eval_period_time_sec: int,
                  eval_period_steps: int, **extra: Any) -> ml_collections.ConfigDict:
  """A config on the embedded digits: 32x32x3 images, 10 classes (`model` gets
  `num_classes`), the digits' split sizes."""
  return image_config(
      model=dict(num_classes=image_data.NUM_CLASSES, **model), image_size=image_data.IMAGE_SIZE,
      data_source='embedded', batch_size=batch_size, eval_batch_size=eval_batch_size,
      num_train_examples=DIGITS_SPLIT_SIZES['train'],
      num_validation_examples=DIGITS_SPLIT_SIZES['validation'],
      num_test_examples=DIGITS_SPLIT_SIZES['test'],
      validation_target_value=validation_target_value, test_target_value=test_target_value,
      step_hint=step_hint, max_allowed_runtime_sec=max_allowed_runtime_sec,
      eval_period_time_sec=eval_period_time_sec, eval_period_steps=eval_period_steps, **extra)


def small_digits_config(*, model: Dict[str, Any], batch_size: int,
                        validation_target_value: float, test_target_value: float, step_hint: int,
                        max_allowed_runtime_sec: int, **extra: Any) -> ml_collections.ConfigDict:
  """A `small` config: the digits, evaluated every `SMALL_EVAL_PERIOD_STEPS` steps."""
  return digits_config(
      model=model, batch_size=batch_size, eval_batch_size=SMALL_EVAL_BATCH_SIZE,
      validation_target_value=validation_target_value, test_target_value=test_target_value,
      step_hint=step_hint, max_allowed_runtime_sec=max_allowed_runtime_sec,
      eval_period_time_sec=SMALL_EVAL_PERIOD_TIME_SEC, eval_period_steps=SMALL_EVAL_PERIOD_STEPS,
      **extra)


def tiny_digits_config(*, model: Dict[str, Any], batch_size: int,
                       **extra: Any) -> ml_collections.ConfigDict:
  """A `tiny` config (tests only): the digits, the shared tiny targets and budgets."""
  return digits_config(
      model=model, batch_size=batch_size, eval_batch_size=TINY_EVAL_BATCH_SIZE,
      validation_target_value=TINY_VALIDATION_TARGET, test_target_value=TINY_TEST_TARGET,
      step_hint=TINY_STEP_HINT, max_allowed_runtime_sec=TINY_MAX_RUNTIME_SEC,
      eval_period_time_sec=TINY_EVAL_PERIOD_TIME_SEC, eval_period_steps=TINY_EVAL_PERIOD_STEPS,
      **extra)
