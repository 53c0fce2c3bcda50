"""ogbg-molpcba batches from tensorflow-datasets or from the embedded data, in one format.

Both sources yield examples in tensorflow-datasets' `ogbg_molpcba` format (one row per bond in
`edge_index`, labels NaN where missing); `batch_examples` turns either stream into the batches
of AlgoPerf's pipeline (`algoperf/workloads/ogbg/input_pipeline.py`), vectorised in numpy:

  * each molecule's graph holds both directions of every bond (the forward rows, then the
    reversed rows, sharing the bond features);
  * molecules are grouped as `jraph.dynamically_batch` does: added to a batch until one more
    would exceed the padding budget (`avg_nodes * batch_size + 1` nodes, `avg_edges *
    batch_size` edges, `batch_size + 1` graphs), and each batch is padded to exactly that budget
    as `jraph.pad_with_graphs` does: every batch has the same shapes and holds at most
    `batch_size` molecules (fewer when nodes or edges run out first);
  * `targets` are the labels with NaN replaced by 0, `weights` is 1 for a present label of a
    molecule and 0 for a missing label or a padding graph;
  * data-parallel (`num_shards` devices, AlgoPerf's per-device batches): each batch is
    `num_shards` batches of the per-device budget concatenated (`concatenate_shards`, node indices
    offset as `jraph.batch` does), so that splitting every array along its leading dimension
    over the devices gives each device whole molecules and its own padding graph. With one
    device this is the batch above.

TensorFlow is imported inside `tfds_examples` only, so the embedded path never pays for it.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence

import jraph
import numpy as np

from contract.errors import BenchmarkError
from workloads.ogbg_molpcba.embedded_data import (NUM_ATOM_FEATURES, NUM_BOND_FEATURES,
                                                  EmbeddedData)

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


def batch_examples(examples: Iterable[Example], budget: PaddingBudget,
                   num_shards: int = 1) -> Iterator[Batch]:
  """Batches of `num_shards` per-device batches (`shard_batches`) concatenated along their
  leading dimensions (`concatenate_shards`); the last one completed with all-padding shards."""
  shards = shard_batches(examples, budget)
  while True:
    group = list(itertools.islice(shards, num_shards))
    if not group:
      return
    if num_shards == 1:
      yield group[0]
      continue
    yield concatenate_shards(group + [padding_shard(group[0])] * (num_shards - len(group)))


def padding_shard(like: Batch) -> Batch:
  """A batch of `like`'s shapes without molecules: graph 0 pads (holds every node and edge, its
  edges connect node 0 to itself), the other graphs are empty, every weight is 0."""
  graph = like['inputs']
  n_node, n_edge = np.zeros_like(graph.n_node), np.zeros_like(graph.n_edge)
  n_node[0], n_edge[0] = len(graph.nodes), len(graph.senders)
  inputs = graph._replace(nodes=np.zeros_like(graph.nodes), edges=np.zeros_like(graph.edges),
                          senders=np.zeros_like(graph.senders),
                          receivers=np.zeros_like(graph.receivers), n_node=n_node, n_edge=n_edge)
  return {'inputs': inputs, 'targets': np.zeros_like(like['targets']),
          'weights': np.zeros_like(like['weights'])}


def concatenate_shards(shards: Sequence[Batch]) -> Batch:
  """One batch of per-device batches: arrays concatenated, `senders`/`receivers` offset by the
  nodes before them (`jraph.batch_np`); shard d's rows are the d-th equal slice of each array."""
  graph = jraph.batch_np([shard['inputs'] for shard in shards])
  graph = graph._replace(senders=graph.senders.astype(np.int32),
                         receivers=graph.receivers.astype(np.int32))
  return {'inputs': graph,
          'targets': np.concatenate([shard['targets'] for shard in shards]),
          'weights': np.concatenate([shard['weights'] for shard in shards])}


def shard_batches(examples: Iterable[Example], budget: PaddingBudget) -> Iterator[Batch]:
  """Groups examples greedily into batches that fit `budget`, each padded to exactly `budget`.

  The grouping is `jraph.dynamically_batch`'s (AlgoPerf's): molecules join the current batch in
  stream order until the next one would exceed `n_graph - 1` graphs, `n_node - 1` nodes or
  `n_edge` edges (counting both directions of each bond); then the batch is emitted and the next
  one starts with that molecule. The last, partial batch is emitted too.

  Raises:
    ValueError: a single molecule does not fit the budget.
  """
  group: List[Example] = []
  num_nodes = num_edges = 0
  for example in examples:
    example_nodes = int(example['num_nodes'][0])
    example_edges = 2 * len(example['edge_index'])
    if example_nodes > budget.n_node - 1 or example_edges > budget.n_edge:
      raise ValueError(f'a molecule with {example_nodes} nodes and {example_edges} edges does '
                       f'not fit the padding budget {budget}')
    if group and (len(group) == budget.n_graph - 1 or
                  num_nodes + example_nodes > budget.n_node - 1 or
                  num_edges + example_edges > budget.n_edge):
      yield padded_batch(group, budget)
      group, num_nodes, num_edges = [], 0, 0
    group.append(example)
    num_nodes += example_nodes
    num_edges += example_edges
  if group:
    yield padded_batch(group, budget)


def padded_batch(examples: Sequence[Example], budget: PaddingBudget) -> Batch:
  """One batch of molecules, padded like `jraph.pad_with_graphs`.

  Molecule g (with n_g atoms, b_g bonds, nodes from row N_g and bonds from B_g in the
  concatenation) owns node rows [N_g, N_g + n_g) and edge rows [2 B_g, 2 B_g + 2 b_g): first its
  bonds (i, j) in stored order, then the same bonds reversed (j, i), both with the bond's
  features (AlgoPerf's `_to_jraph`). After the G molecules come one padding graph holding all
  remaining nodes and edges (its edges connect its first node to itself) and empty graphs up to
  `budget.n_graph`.

  Args:
    examples: G molecules in tfds' `ogbg_molpcba` format: `num_nodes` [1], `node_feat` [n, 9],
      `edge_feat` [b, 3], `edge_index` [b, 2] (one row per bond), `labels` [T] (NaN = missing);
      any numeric dtypes.
    budget: sizes to pad to; must hold the G molecules plus one padding node and graph.

  Returns:
    `inputs`: `jraph.GraphsTuple` with nodes float32 [n_node, 9], edges float32 [n_edge, 3],
    senders/receivers int32 [n_edge], n_node/n_edge int32 [n_graph], globals None;
    `targets` float32 [n_graph, T] (NaN -> 0); `weights` float32 [n_graph, T] (1 for a present
    label of a molecule, 0 for a missing label or a padding graph).
  """
  num_graphs = len(examples)
  n_node = np.array([int(e['num_nodes'][0]) for e in examples], np.int64)
  n_bond = np.array([len(e['edge_index']) for e in examples], np.int64)
  node_start = np.cumsum(n_node) - n_node
  bond_start = np.cumsum(n_bond) - n_bond
  total_nodes, total_bonds = int(n_node.sum()), int(n_bond.sum())

  graph_of_bond = np.repeat(np.arange(num_graphs), n_bond)  # [total_bonds]
  bonds = np.concatenate([np.reshape(e['edge_index'], (-1, 2)) for e in examples])
  bonds = bonds.astype(np.int64) + node_start[graph_of_bond, None]  # batch node indices
  bond_feat = np.concatenate(
      [np.reshape(e['edge_feat'], (-1, NUM_BOND_FEATURES)) for e in examples])
  # Bond k of molecule g: forward row 2 B_g + (k - B_g) = B_g + k, reverse row that + b_g.
  forward = bond_start[graph_of_bond] + np.arange(total_bonds)
  reverse = forward + n_bond[graph_of_bond]

  nodes = np.zeros((budget.n_node, NUM_ATOM_FEATURES), np.float32)
  nodes[:total_nodes] = np.concatenate([e['node_feat'] for e in examples])
  edges = np.zeros((budget.n_edge, NUM_BOND_FEATURES), np.float32)
  edges[forward] = bond_feat
  edges[reverse] = bond_feat
  senders = np.full(budget.n_edge, total_nodes, np.int32)
  receivers = np.full(budget.n_edge, total_nodes, np.int32)
  senders[forward], receivers[forward] = bonds[:, 0], bonds[:, 1]
  senders[reverse], receivers[reverse] = bonds[:, 1], bonds[:, 0]
  graph_n_node = np.zeros(budget.n_graph, np.int32)
  graph_n_node[:num_graphs] = n_node
  graph_n_node[num_graphs] = budget.n_node - total_nodes
  graph_n_edge = np.zeros(budget.n_graph, np.int32)
  graph_n_edge[:num_graphs] = 2 * n_bond
  graph_n_edge[num_graphs] = budget.n_edge - 2 * total_bonds

  labels = np.stack([e['labels'] for e in examples]).astype(np.float32)  # [G, T]
  targets = np.zeros((budget.n_graph, labels.shape[1]), np.float32)
  weights = np.zeros((budget.n_graph, labels.shape[1]), np.float32)
  present = ~np.isnan(labels)
  targets[:num_graphs] = np.where(present, labels, 0.0)
  weights[:num_graphs] = present
  inputs = jraph.GraphsTuple(nodes=nodes, edges=edges, senders=senders, receivers=receivers,
                             n_node=graph_n_node, n_edge=graph_n_edge, globals=None)
  return {'inputs': inputs, 'targets': targets, 'weights': weights}


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

  if shuffle_seed is None:
    dataset = tfds.load(tfds_name, split=split, data_dir=data_dir, shuffle_files=False)
    if num_examples is not None:
      dataset = dataset.take(num_examples)
  else:
    file_seed, buffer_seed = np.random.SeedSequence(shuffle_seed).generate_state(2)
    dataset = tfds.load(tfds_name, split=split, data_dir=data_dir, shuffle_files=True,
                        read_config=tfds.ReadConfig(shuffle_seed=int(file_seed)))
    dataset = dataset.shuffle(shuffle_buffer_size, seed=int(buffer_seed)).repeat()
  return iter(tfds.as_numpy(dataset))
