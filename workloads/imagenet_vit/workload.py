"""The ImageNet ViT workload (AlgoPerf `imagenet_vit`): ViT-S/16 on ImageNet-1k at full size,
a small ViT on the embedded digits otherwise. Targets and budgets are in `configs.py`."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Tuple

import ml_collections
from flax import linen as nn

from workloads import image_pipeline
from workloads.image_classification import ImageClassificationWorkload
from workloads.imagenet_vit import configs, input_pipeline
from workloads.imagenet_vit.model import ViT


class ImagenetVitWorkload(ImageClassificationWorkload):
  """Softmax cross-entropy, top-1 accuracy target; no model state (no BatchNorm)."""

  workload_name = 'imagenet_vit'

  @staticmethod
  def get_config(config_name: str) -> ml_collections.ConfigDict:
    return configs.get_config(config_name)

  @staticmethod
  def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    return ViT(**config.model)

  @property
  def tfds_names(self) -> Tuple[str, ...]:
    return (self.config.tfds.train_name, self.config.tfds.test_name)

  def _train_batches(self, data_dir: Optional[str], seed: int,
                     batch_size: int) -> Iterator[image_pipeline.Batch]:
    """The training stream, mixed up when the config says so."""
    batches = super()._train_batches(data_dir, seed, batch_size)
    if not self.config.use_mixup:
      return batches
    return input_pipeline.mixup_batches(batches, seed, self.config.mixup_alpha,
                                        self.config.model.num_classes)

  def _tfds_train_batches(self, data_dir: str, seed: int,
                          batch_size: int) -> Iterator[image_pipeline.Batch]:
    return input_pipeline.train_batches(data_dir, seed, batch_size, self.config.image_size,
                                        self.config.tfds)

  def _tfds_eval_batches(self, data_dir: str, split: str, batch_size: int,
                         num_examples: Optional[int],
                         cache: bool) -> Iterable[image_pipeline.Batch]:
    return input_pipeline.eval_batches(data_dir, split, batch_size, num_examples, cache,
                                       self.config.image_size, self.config.tfds)
