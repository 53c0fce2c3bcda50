"""Full-config image workloads on `tfds.testing.mock_data`, shared by the pipeline tests.

`tfds.testing.mock_data` supplies random examples of the real specs, but the workloads first
check that `--data_dir` holds prepared datasets (`dataset_info.json` in tfds's layout); these
helpers make such a directory without any data.
"""

import os
from typing import Iterator, Sequence

import pytest

from workloads import get_workload


def prepared_data_dir(root: str, dataset_names: Sequence[str]) -> str:
  """`root` laid out as tfds's data dir for each `name:version` (`cifar10:3.0.2`, ...), each
  holding an empty `dataset_info.json`; returns `root`."""
  for name in dataset_names:
    path = os.path.join(root, *name.replace(':', '/').split('/'))
    os.makedirs(path)
    open(os.path.join(path, 'dataset_info.json'), 'w').close()
  return root


def mocked_full_workload(tmp_path_factory, workload_name: str, dataset_names: Sequence[str],
                         num_examples: int) -> Iterator:
  """Yields `workload_name`'s full config on a prepared data dir, inside
  `tfds.testing.mock_data(num_examples)` (skipped without tensorflow-datasets): the body of a
  module-scoped fixture."""
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = prepared_data_dir(str(tmp_path_factory.mktemp('tfds')), dataset_names)
  with tfds.testing.mock_data(num_examples=num_examples):
    yield get_workload(workload_name, 'full', data_dir=data_dir)
