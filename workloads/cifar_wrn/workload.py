"""The CIFAR-10 Wide ResNet workload: WRN-16-4 on CIFAR-10 at full size, a narrower WRN on the
embedded digits otherwise. Targets and budgets are in `configs.py`."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Tuple

import ml_collections
from flax import linen as nn

from workloads import image_pipeline
from workloads.cifar_wrn import configs, input_pipeline
from workloads.cifar_wrn.model import WideResNet
from workloads.image_classification import ImageClassificationWorkload


class CifarWrnWorkload(ImageClassificationWorkload):
  """Softmax cross-entropy, top-1 accuracy target; `model_state` holds the BatchNorm running
  statistics (`{'batch_stats': ...}`)."""

  workload_name = 'cifar'

  @staticmethod
  def get_config(config_name: str) -> ml_collections.ConfigDict:
    return configs.get_config(config_name)

  @staticmethod
  def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    return WideResNet(**config.model)

  @property
  def tfds_names(self) -> Tuple[str, ...]:
    return (self.config.tfds.name,)

  def _tfds_train_batches(self, data_dir: str, seed: int,
                          batch_size: int) -> Iterator[image_pipeline.Batch]:
    return input_pipeline.train_batches(data_dir, seed, batch_size, self.config.tfds)

  def _tfds_eval_batches(self, data_dir: str, split: str, batch_size: int,
                         num_examples: Optional[int],
                         cache: bool) -> Iterable[image_pipeline.Batch]:
    return input_pipeline.eval_batches(data_dir, split, batch_size, num_examples, cache,
                                       self.config.tfds)
