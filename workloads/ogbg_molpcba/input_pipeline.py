"""ogbg-molpcba batches from tensorflow-datasets or from the embedded data, in one format.

Both sources yield examples in tensorflow-datasets' `ogbg_molpcba` format (one row per bond in
`edge_index`, labels NaN where missing); `batch_examples` turns either stream into AlgoPerf's
batches (`algoperf/workloads/ogbg/input_pipeline.py`):

  * each molecule becomes a `jraph.GraphsTuple` with both directions of every bond (the forward
    rows, then the reversed rows, sharing the bond features);
  * `jraph.dynamically_batch` adds molecules to a batch until one more would exceed the padding
    budget `(avg_nodes * batch_size + 1 nodes, avg_edges * batch_size edges, batch_size + 1
    graphs)`, then pads it to exactly that budget with `jraph.pad_with_graphs`: every batch has
    the same shapes, and holds at most `batch_size` real molecules (fewer when the nodes or edges
    run out first);
  * `targets` are the labels with NaN replaced by 0, `weights` is 1 for a present label of a real
    molecule and 0 for a missing label or a padding graph.

TensorFlow is imported inside `tfds_examples` only, so the embedded path never pays for it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Iterator, NamedTuple, Optional

import jraph
import numpy as np

from benchmark.spec import BenchmarkError
from workloads.ogbg_molpcba.embedded_data import EmbeddedData

Example = Dict[str, np.ndarray]
Batch = Dict[str, Any]


class PaddingBudget(NamedTuple):
  """The fixed sizes every batch is padded to."""
  n_node: int
  n_edge: int
  n_graph: int


def padding_budget(batch_size: int, avg_nodes_per_graph: int,
                   avg_edges_per_graph: int) -> PaddingBudget:
  """AlgoPerf's budget: `avg_nodes * bs + 1` nodes (room for the padding graph's node),
  `avg_edges * bs` edges, `bs + 1` graphs (one padding graph)."""
  return PaddingBudget(n_node=avg_nodes_per_graph * batch_size + 1,
                       n_edge=avg_edges_per_graph * batch_size,
                       n_graph=batch_size + 1)


def example_to_graph(example: Example) -> jraph.GraphsTuple:
  """One molecule as a `jraph.GraphsTuple` holding both directions of each bond.

  Args:
    example: `num_nodes` [1], `node_feat` [n, 9], `edge_feat` [b, 3], `edge_index` [b, 2]
      (one row `(i, j)` per bond), `labels` [T].

  Returns:
    nodes float32 [n, 9]; edges float32 [2b, 3]; senders/receivers int32 [2b] (`i` then `j`
    for the forward rows, swapped for the reverse rows); n_node, n_edge int32 [1]; globals
    float32 [1, T] carries the labels through batching.
  """
  edge_index = np.asarray(example['edge_index'], np.int32).reshape(-1, 2)
  edge_feat = np.asarray(example['edge_feat'], np.float32)
  senders, receivers = edge_index[:, 0], edge_index[:, 1]
  return jraph.GraphsTuple(
      nodes=np.asarray(example['node_feat'], np.float32),
      edges=np.concatenate([edge_feat, edge_feat]),
      senders=np.concatenate([senders, receivers]),
      receivers=np.concatenate([receivers, senders]),
      n_node=np.asarray(example['num_nodes'], np.int32).reshape(1),
      n_edge=np.array([2 * len(edge_index)], np.int32),
      globals=np.asarray(example['labels'], np.float32)[None])


def graph_padding_mask(graph: jraph.GraphsTuple) -> np.ndarray:
  """bool [n_graph]: False for the padding graphs `jraph.pad_with_graphs` appended.

  The first padding graph holds the padding nodes (at least one), the others are empty; real
  molecules have at least one atom. So the padding graphs are the trailing empty graphs plus the
  one before them (jraph's `get_number_of_padding_with_graphs_graphs`, in numpy).
  """
  n_node = np.asarray(graph.n_node)
  num_trailing_empty = int(np.argmin(n_node[::-1] == 0))
  num_real = len(n_node) - num_trailing_empty - 1
  return np.arange(len(n_node)) < num_real


def batch_examples(examples: Iterable[Example], budget: PaddingBudget) -> Iterator[Batch]:
  """Dynamically batches examples and pads every batch to `budget`.

  Yields:
    `inputs`: `jraph.GraphsTuple` with `budget.n_node` nodes, `budget.n_edge` edges,
    `budget.n_graph` graphs and `globals=None`; `targets` float32 [n_graph, T] (NaN -> 0);
    `weights` float32 [n_graph, T] (0 for missing labels and padding graphs).
  """
  graphs = map(example_to_graph, examples)
  for padded in jraph.dynamically_batch(graphs, *budget):
    labels = padded.globals
    missing = np.isnan(labels)
    real = graph_padding_mask(padded)
    yield {
        'inputs': padded._replace(globals=None),
        'targets': np.where(missing, 0.0, labels).astype(np.float32),
        'weights': (~missing & real[:, None]).astype(np.float32),
    }


def embedded_examples(data: EmbeddedData, split: str, shuffle_seed: Optional[int] = None,
                      num_examples: Optional[int] = None) -> Iterator[Example]:
  """Examples of one split of the embedded data.

  Args:
    data: the loaded embedded data.
    split: 'train', 'validation' or 'test'.
    shuffle_seed: None: one pass in file order. An int: endless, each epoch a fresh permutation
      drawn from `numpy.random.default_rng(shuffle_seed)`.
    num_examples: only the first `num_examples` molecules of the split (unshuffled passes).
  """
  indices = data.split_indices(split)
  if shuffle_seed is None:
    for index in indices[:num_examples]:
      yield data.example(int(index))
    return
  rng = np.random.default_rng(shuffle_seed)
  while True:
    for index in rng.permutation(indices):
      yield data.example(int(index))


def tfds_version_dir(data_dir: str, tfds_name: str) -> str:
  """`<data_dir>/ogbg_molpcba/0.1.3` for `tfds_name='ogbg_molpcba:0.1.3'`."""
  name, _, version = tfds_name.partition(':')
  return os.path.join(data_dir, name, version)


def check_tfds_data(data_dir: Optional[str], tfds_name: str) -> None:
  """Raises BenchmarkError unless `data_dir` holds the prepared tensorflow-datasets data."""
  if not data_dir:
    raise BenchmarkError('ogbg_molpcba with data source "tfds" needs --data_dir')
  if not os.path.isdir(data_dir):
    raise BenchmarkError(f'data directory {data_dir!r} does not exist')
  expected = tfds_version_dir(data_dir, tfds_name)
  if not os.path.isdir(expected):
    raise BenchmarkError(
        f'no {tfds_name} data in {data_dir!r}: expected the folder {expected!r}, written by '
        f"`tfds.builder('{tfds_name}', data_dir=...).download_and_prepare()` (or AlgoPerf's "
        'dataset_setup.py --ogbg)')


def tfds_examples(split: str, data_dir: str, tfds_name: str,
                  shuffle_seed: Optional[int] = None, shuffle_buffer_size: int = 2**15,
                  num_examples: Optional[int] = None) -> Iterator[Example]:
  """Examples of one split of tensorflow-datasets' `ogbg_molpcba`.

  Args:
    split: 'train', 'validation' or 'test'.
    data_dir: the tensorflow-datasets directory.
    tfds_name: name and version, e.g. 'ogbg_molpcba:0.1.3' (AlgoPerf's).
    shuffle_seed: None: one pass in stored order. An int: as AlgoPerf's training stream, files
      shuffled and examples shuffled in a buffer of `shuffle_buffer_size`, repeated forever.
    shuffle_buffer_size: examples in the shuffle buffer.
    num_examples: only the first `num_examples` examples (unshuffled passes).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  shuffle = shuffle_seed is not None
  file_seed, buffer_seed = (np.random.SeedSequence(shuffle_seed).generate_state(2)
                            if shuffle else (None, None))
  dataset = tfds.load(tfds_name, split=split, data_dir=data_dir, shuffle_files=shuffle,
                      read_config=tfds.ReadConfig(
                          shuffle_seed=None if file_seed is None else int(file_seed)))
  if shuffle:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=int(buffer_seed)).repeat()
  elif num_examples is not None:
    dataset = dataset.take(num_examples)
  return iter(tfds.as_numpy(dataset))
