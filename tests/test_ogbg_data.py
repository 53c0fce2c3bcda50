"""ogbg-molpcba data: OGB featurisation checked by hand, the embedded data set, the padded batches
of both sources (tfds through `tfds.testing.mock_data`), determinism and data-dir errors."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jraph
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors

from contract.errors import BenchmarkError
from workloads.ogbg_molpcba import embedded_data, input_pipeline
from workloads.ogbg_molpcba.workload import OgbgMolpcbaWorkload

# OGB vocabulary positions, spelled out for the hand-derived features below.
CARBON, NITROGEN, OXYGEN, SODIUM, CHLORINE = 5, 6, 7, 10, 16  # atomic number - 1
CHARGE_0, CHARGE_PLUS_1, CHARGE_MINUS_1 = 5, 6, 4  # index in [-5, ..., 5, misc]
SP, SP2, SP3, HYBRID_MISC = 0, 1, 2, 5
CHI_NONE, CHI_CCW = 0, 2
SINGLE, DOUBLE, AROMATIC, BOND_MISC = 0, 1, 3, 4
STEREO_NONE, STEREO_E = 0, 2


@pytest.fixture(scope='module')
def data() -> embedded_data.EmbeddedData:
  return embedded_data.load_embedded_data()


def _undirected(edge_index: np.ndarray) -> set:
  return {tuple(sorted(pair)) for pair in edge_index.T.tolist()}


# -- Featurisation (OGB smiles2graph) ------------------------------------------------------------

def test_ethanol_features_by_hand():
  graph = embedded_data.smiles_to_graph('CCO')
  # [atomic num, chirality, total degree (H included), charge, total H, radicals, hybridisation,
  #  aromatic, in ring]
  np.testing.assert_array_equal(graph['node_feat'], [
      [CARBON, CHI_NONE, 4, CHARGE_0, 3, 0, SP3, 0, 0],  # CH3
      [CARBON, CHI_NONE, 4, CHARGE_0, 2, 0, SP3, 0, 0],  # CH2
      [OXYGEN, CHI_NONE, 2, CHARGE_0, 1, 0, SP3, 0, 0],  # OH
  ])
  np.testing.assert_array_equal(graph['edge_index'], [[0, 1, 1, 2], [1, 0, 2, 1]])
  np.testing.assert_array_equal(graph['edge_feat'], [[SINGLE, STEREO_NONE, 0]] * 4)
  assert graph['num_nodes'] == 3


def test_benzene_features_by_hand():
  graph = embedded_data.smiles_to_graph('c1ccccc1')
  # Every aromatic CH: degree 3 (2 C + 1 H), 1 H, sp2, aromatic, in a ring.
  np.testing.assert_array_equal(graph['node_feat'],
                                [[CARBON, CHI_NONE, 3, CHARGE_0, 1, 0, SP2, 1, 1]] * 6)
  assert _undirected(graph['edge_index']) == {(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5)}
  # Both directions of each bond, forward then reverse.
  np.testing.assert_array_equal(graph['edge_index'][:, 1::2], graph['edge_index'][::-1, ::2])
  np.testing.assert_array_equal(graph['edge_feat'], [[AROMATIC, STEREO_NONE, 1]] * 12)


def test_chiral_and_stereo_features_by_hand():
  # OGB's own example (ogb/utils/features.py): the chiral carbon and the E double bond.
  graph = embedded_data.smiles_to_graph('Cl[C@H](/C=C/C)Br')
  np.testing.assert_array_equal(graph['node_feat'][1],
                                [CARBON, CHI_CCW, 4, CHARGE_0, 1, 0, SP3, 0, 0])
  bond_2 = graph['edge_feat'][2 * 2]  # Bond 2 (C2=C3), forward direction.
  np.testing.assert_array_equal(bond_2, [DOUBLE, STEREO_E, 0])


def test_charged_atoms_and_misc_buckets_by_hand():
  graph = embedded_data.smiles_to_graph('C[NH3+]')
  np.testing.assert_array_equal(graph['node_feat'][1],
                                [NITROGEN, CHI_NONE, 4, CHARGE_PLUS_1, 3, 0, SP3, 0, 0])
  # Isolated ions: no bonds; Na+ has a hybridisation outside OGB's list -> 'misc'.
  ions = embedded_data.smiles_to_graph('[Na+].[Cl-]')
  np.testing.assert_array_equal(ions['node_feat'], [
      [SODIUM, CHI_NONE, 0, CHARGE_PLUS_1, 0, 0, HYBRID_MISC, 0, 0],
      [CHLORINE, CHI_NONE, 0, CHARGE_MINUS_1, 0, 0, SP3, 0, 0],
  ])
  assert ions['edge_index'].shape == (2, 0) and ions['edge_feat'].shape == (0, 3)
  # A dative bond is outside OGB's bond types -> 'misc'; a methyl radical has 1 radical electron.
  np.testing.assert_array_equal(embedded_data.smiles_to_graph('[Pt]<-N')['edge_feat'][0],
                                [BOND_MISC, STEREO_NONE, 0])
  assert embedded_data.smiles_to_graph('[CH3]')['node_feat'][0, 5] == 1
  assert embedded_data.smiles_to_graph('not a molecule') is None


def _algoperf_to_jraph(example) -> jraph.GraphsTuple:
  """Reference: AlgoPerf's per-molecule `_to_jraph` (both bond directions, labels in globals)."""
  edge_index = np.asarray(example['edge_index']).reshape(-1, 2)
  edge_feat = np.asarray(example['edge_feat'], np.float32).reshape(-1, 3)
  return jraph.GraphsTuple(
      n_node=np.asarray(example['num_nodes']), n_edge=np.array([2 * len(edge_index)]),
      nodes=np.asarray(example['node_feat'], np.float32),
      edges=np.concatenate([edge_feat, edge_feat]),
      senders=np.concatenate([edge_index[:, 0], edge_index[:, 1]]),
      receivers=np.concatenate([edge_index[:, 1], edge_index[:, 0]]),
      globals=np.asarray(example['labels'], np.float32)[None])


def test_batches_equal_jraph_dynamic_batching_and_padding():
  """Our vectorised batching against AlgoPerf's: jraph.dynamically_batch + pad_with_graphs."""
  rng = np.random.default_rng(0)
  examples = []
  for i, smiles in enumerate(['CCO', 'c1ccccc1', '[Na+].[Cl-]', 'CC(=O)[O-]', 'C[NH3+]'] * 7):
    graph = embedded_data.smiles_to_graph(smiles)
    labels = rng.integers(0, 2, 5).astype(np.float32)
    labels[i % 5] = np.nan
    examples.append({'num_nodes': np.array([graph['num_nodes']]),
                     'node_feat': graph['node_feat'].astype(np.float32),
                     'num_edges': np.array([graph['edge_index'].shape[1] // 2]),
                     'edge_feat': graph['edge_feat'][::2].astype(np.float32),
                     'edge_index': graph['edge_index'][:, ::2].T, 'labels': labels})
  budget = input_pipeline.PaddingBudget(n_node=21, n_edge=24, n_graph=7)
  ours = list(input_pipeline.batch_examples(examples, budget))
  reference = list(jraph.dynamically_batch(map(_algoperf_to_jraph, examples), *budget))
  assert len(ours) == len(reference) > 5
  for batch, expected in zip(ours, reference):
    for field in ('nodes', 'edges', 'senders', 'receivers', 'n_node', 'n_edge'):
      np.testing.assert_array_equal(getattr(batch['inputs'], field), getattr(expected, field))
    real = np.asarray(jraph.get_graph_padding_mask(expected))
    labels = expected.globals
    np.testing.assert_array_equal(batch['targets'], np.nan_to_num(labels))
    np.testing.assert_array_equal(batch['weights'], ~np.isnan(labels) & real[:, None])


def test_a_molecule_larger_than_the_budget_is_an_error():
  example = {'num_nodes': np.array([5]), 'node_feat': np.ones((5, 9)), 'num_edges': np.array([0]),
             'edge_feat': np.zeros((0, 3)), 'edge_index': np.zeros((0, 2)), 'labels': np.ones(2)}
  with pytest.raises(ValueError, match='does not fit'):
    next(input_pipeline.batch_examples([example], input_pipeline.PaddingBudget(5, 4, 3)))


# -- The embedded data set ---------------------------------------------------------------------

def test_embedded_data_set_facts(data):
  arrays = data.arrays
  num_molecules = len(arrays['smiles'])
  assert int(arrays['num_source_molecules']) == num_molecules + int(arrays['num_skipped'])
  assert int(arrays['num_skipped']) < 20  # RDKit rejects a handful of the 5K NCI SMILES.
  sizes = [data.num_examples(s) for s in embedded_data.SPLITS]
  assert sum(sizes) == num_molecules
  assert abs(sizes[0] - 0.8 * num_molecules) <= 1 and abs(sizes[1] - 0.1 * num_molecules) <= 1
  assert all(name.startswith('fr_') for name in data.task_names)
  labels = arrays['labels']
  assert labels.shape == (num_molecules, data.num_tasks) and data.num_tasks > 30
  assert labels.sum(0).min() >= embedded_data.MIN_POSITIVES_PER_TASK
  for split in embedded_data.SPLITS:  # Every task has both classes in every split.
    split_labels = labels[data.split_indices(split)]
    assert split_labels.max(0).min() == 1 and split_labels.min(0).max() == 0


def test_embedded_examples_match_rdkit(data):
  """Stored graphs and labels, recomputed independently from the SMILES with RDKit."""
  for index in (0, 123, 4000):
    smiles = str(data.arrays['smiles'][index])
    example = data.example(index)
    graph = embedded_data.smiles_to_graph(smiles)
    np.testing.assert_array_equal(example['node_feat'], graph['node_feat'])
    np.testing.assert_array_equal(example['edge_index'].T, graph['edge_index'][:, ::2])
    np.testing.assert_array_equal(example['edge_feat'], graph['edge_feat'][::2])
    mol = Chem.MolFromSmiles(smiles)
    expected = [getattr(Descriptors, name)(mol) > 0 for name in data.task_names]
    np.testing.assert_array_equal(example['labels'], np.array(expected, np.float32))


def test_select_tasks_drops_rare_and_duplicate_columns():
  presence = np.array([[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(embedded_data.select_tasks(presence, min_positives=2), [0, 3])


def test_cache_is_built_once_and_rebuilt_on_version_change(tmp_path, monkeypatch):
  smi = tmp_path / 'mini.smi'
  smi.write_text('CCO\t1\nc1ccccc1\t2\nC1CC\t3\nCC(=O)O\t4\n')  # 'C1CC' does not parse.
  monkeypatch.setattr(embedded_data, 'source_path', lambda: str(smi))
  path = embedded_data.build_embedded_data(str(tmp_path))
  assert path == str(tmp_path / 'ogbg_molpcba' / f'embedded_v{embedded_data.CACHE_VERSION}.npz')
  with np.load(path) as f:
    assert int(f['num_skipped']) == 1 and len(f['smiles']) == 3
  built_at = os.path.getmtime(path)
  assert embedded_data.build_embedded_data(str(tmp_path)) == path
  assert os.path.getmtime(path) == built_at
  monkeypatch.setattr(embedded_data, 'CACHE_VERSION', embedded_data.CACHE_VERSION + 1)
  new_path = embedded_data.build_embedded_data(str(tmp_path))
  assert new_path != path and os.path.exists(new_path)


# -- Batches -----------------------------------------------------------------------------------

def _real_graphs(graph) -> np.ndarray:
  """bool [n_graph]: molecules (at least one atom each) come before the padding graph (at least
  one node) and the empty graphs after it."""
  num_trailing_empty = int(np.argmin(graph.n_node[::-1] == 0))
  return np.arange(len(graph.n_node)) < len(graph.n_node) - num_trailing_empty - 1


def _check_batch(batch, budget, num_tasks):
  graph = batch['inputs']
  assert graph.nodes.shape == (budget.n_node, 9) and graph.edges.shape == (budget.n_edge, 3)
  assert graph.senders.shape == graph.receivers.shape == (budget.n_edge,)
  assert graph.nodes.dtype == graph.edges.dtype == np.float32
  assert graph.senders.dtype == graph.receivers.dtype == graph.n_node.dtype == np.int32
  assert graph.n_node.shape == graph.n_edge.shape == (budget.n_graph,)
  assert graph.n_node.sum() == budget.n_node and graph.n_edge.sum() == budget.n_edge
  assert batch['targets'].shape == batch['weights'].shape == (budget.n_graph, num_tasks)
  assert not np.isnan(batch['targets']).any()
  real = _real_graphs(graph)
  assert not real[-1]  # At least one padding graph.
  assert (batch['weights'][~real] == 0).all()
  return int(real.sum())


def test_embedded_eval_pass_covers_split_once(data):
  budget = input_pipeline.padding_budget(64, 17, 34)
  batches = list(input_pipeline.batch_examples(
      input_pipeline.embedded_examples(data, 'validation'), budget))
  num_real = [_check_batch(b, budget, data.num_tasks) for b in batches]
  assert sum(num_real) == data.num_examples('validation')
  assert max(num_real) <= 64 and num_real[-1] < 64  # The final partial batch is padded.
  labels = np.concatenate([b['targets'][b['weights'][:, 0] > 0] for b in batches])
  np.testing.assert_array_equal(labels, data.arrays['labels'][data.split_indices('validation')])


def test_train_stream_reshuffles_each_epoch(data):
  stream = input_pipeline.embedded_examples(data, 'test', shuffle_seed=3)
  num = data.num_examples('test')
  epochs = [[next(stream)['edge_index'].sum() for _ in range(num)] for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]


def test_workload_train_queue_is_deterministic_given_the_seed():
  workload = OgbgMolpcbaWorkload('tiny')

  def first_batches(seed):
    queue = workload.build_input_queue(jax.random.PRNGKey(seed), 'train', None, 32)
    return [next(queue) for _ in range(3)]

  run_a, run_b, other = first_batches(0), first_batches(0), first_batches(1)
  for a, b in zip(run_a, run_b):
    np.testing.assert_array_equal(a['inputs'].nodes, b['inputs'].nodes)
    np.testing.assert_array_equal(a['targets'], b['targets'])
  assert not np.array_equal(run_a[0]['inputs'].nodes, other[0]['inputs'].nodes)
  assert _check_batch(run_a[0], workload.padding_budget(32), workload.num_tasks) <= 32


def test_nan_labels_become_zero_targets_with_zero_weight():
  examples = [{'num_nodes': np.array([2]), 'node_feat': np.ones((2, 9), np.float32),
               'num_edges': np.array([1]), 'edge_feat': np.ones((1, 3), np.float32),
               'edge_index': np.array([[0, 1]]), 'labels': np.array([1., np.nan, 0.], np.float32)}]
  batch = next(input_pipeline.batch_examples(examples, input_pipeline.PaddingBudget(5, 4, 3)))
  np.testing.assert_array_equal(batch['targets'], [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(batch['weights'], [[1, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_embedded_path_does_not_import_tensorflow():
  code = ('import sys, jax\n'
          'from workloads.ogbg_molpcba.workload import OgbgMolpcbaWorkload\n'
          "w = OgbgMolpcbaWorkload('tiny')\n"
          "next(w.build_input_queue(jax.random.PRNGKey(0), 'train', None, 8))\n"
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], check=True, cwd=root)


# -- tensorflow-datasets path (mocked) ---------------------------------------------------------

TFDS_NUM_TASKS = 128


def _tfds_examples(data: embedded_data.EmbeddedData, split: str):
  """Embedded molecules in tfds' ogbg_molpcba format: 128 labels, missing ones NaN."""
  examples = []
  for position, index in enumerate(data.split_indices(split)[:40]):
    example = data.example(int(index))
    labels = np.full(TFDS_NUM_TASKS, np.nan, np.float32)
    labels[position % 7::7] = float(position % 2)
    labels[:data.num_tasks:3] = example['labels'][::3]
    examples.append(dict(example, labels=labels))
  return examples


@pytest.fixture
def mocked_tfds(data):
  """`tfds.testing.mock_data` serving `_tfds_examples` for each split."""
  tf = pytest.importorskip('tensorflow')
  tfds = pytest.importorskip('tensorflow_datasets')
  split_examples = {s: _tfds_examples(data, s) for s in ('train', 'validation', 'test')}

  def as_dataset(builder, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    del decoders, read_config, shuffle_files, kwargs
    signature = {k: tf.TensorSpec(v.shape, v.dtype)
                 for k, v in builder.info.features.get_tensor_info().items()}
    return tf.data.Dataset.from_generator(lambda: iter(split_examples[str(split)]),
                                          output_signature=signature)

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    yield split_examples


@pytest.fixture
def tfds_dir(tmp_path):
  os.makedirs(tmp_path / 'ogbg_molpcba' / '0.1.3')
  return str(tmp_path)


def test_tfds_eval_batches_match_the_shared_batching(mocked_tfds, tfds_dir):
  workload = OgbgMolpcbaWorkload('full', data_dir=tfds_dir, data_source='tfds')
  workload.check_data_available()
  budget = workload.padding_budget(16)
  assert budget == (26 * 16 + 1, 56 * 16, 17)
  batches = list(workload.build_input_queue(jax.random.PRNGKey(0), 'validation', None, 16))
  expected = list(input_pipeline.batch_examples(mocked_tfds['validation'], budget))
  assert len(batches) == len(expected)
  num_real = 0
  for batch, reference in zip(batches, expected):
    num_real += _check_batch(batch, budget, TFDS_NUM_TASKS)
    np.testing.assert_array_equal(batch['inputs'].nodes, reference['inputs'].nodes)
    np.testing.assert_array_equal(batch['inputs'].senders, reference['inputs'].senders)
    np.testing.assert_array_equal(batch['targets'], reference['targets'])
    np.testing.assert_array_equal(batch['weights'], reference['weights'])
  assert num_real == len(mocked_tfds['validation'])
  # NaN labels are masked: weights count exactly the present labels.
  present = sum((~np.isnan(e['labels'])).sum() for e in mocked_tfds['validation'])
  assert sum(b['weights'].sum() for b in batches) == present


def test_tfds_train_stream_is_shuffled_deterministically(mocked_tfds, tfds_dir):
  workload = OgbgMolpcbaWorkload('full', data_dir=tfds_dir, data_source='tfds')

  def first_batch(seed):
    queue = workload.build_input_queue(jax.random.PRNGKey(seed), 'train', tfds_dir, 8)
    return next(queue)

  a, b, c = first_batch(0), first_batch(0), first_batch(5)
  np.testing.assert_array_equal(a['inputs'].nodes, b['inputs'].nodes)
  assert not np.array_equal(a['inputs'].nodes, c['inputs'].nodes)
  _check_batch(a, workload.padding_budget(8), TFDS_NUM_TASKS)
  # Endless: more batches than 40 molecules fill.
  queue = workload.build_input_queue(jax.random.PRNGKey(0), 'train', tfds_dir, 8)
  assert len([next(queue) for _ in range(12)]) == 12


# -- Data-dir errors ---------------------------------------------------------------------------

def test_missing_tfds_data_dir_is_a_clear_error(tmp_path):
  for data_dir in (None, str(tmp_path / 'absent')):
    with pytest.raises(BenchmarkError, match='data'):
      OgbgMolpcbaWorkload('full', data_dir=data_dir, data_source='tfds').check_data_available()


def test_data_dir_without_ogbg_molpcba_is_a_clear_error(tmp_path):
  workload = OgbgMolpcbaWorkload('full', data_dir=str(tmp_path), data_source='tfds')
  with pytest.raises(BenchmarkError, match='no ogbg_molpcba:0.1.3 data'):
    workload.check_data_available()
  with pytest.raises(BenchmarkError, match='no ogbg_molpcba:0.1.3 data'):
    next(workload.build_input_queue(jax.random.PRNGKey(0), 'train', str(tmp_path), 8))
