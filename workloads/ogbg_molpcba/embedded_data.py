"""The embedded default data of the small configs: RDKit's 5K NCI molecules as OGB-style graphs.

Source: `rdkit/Data/NCI/first_5K.smi`, shipped with the `rdkit` wheel (one `SMILES<TAB>id` per
line). Each molecule RDKit parses is featurised exactly like OGB's `smiles2graph`
(`ogb/utils/mol.py`, `ogb/utils/features.py`): 9 categorical atom features and 3 categorical
bond features, each the index into OGB's vocabulary, with a final 'misc' bucket where OGB has one.
Labels are multi-task binary: task t is 1 when RDKit's fragment-count descriptor `fr_<t>`
(`rdkit.Chem.Descriptors`) is positive for the molecule. A task is kept when at least
`MIN_POSITIVES_PER_TASK` molecules have the fragment, and when its labels are not an exact copy
of an earlier kept task (e.g. `fr_COO2` duplicates `fr_COO`).

The split is a seeded random 80/10/10 permutation (`SPLIT_SEED`); within a split molecules keep
their file order.

Storage follows the OGB raw files (and hence tensorflow-datasets' `ogbg_molpcba`): each bond is
stored once, `(begin, end)`; `input_pipeline.padded_batch` adds the reverse direction for
both sources. The cache is `<data_root>/ogbg_molpcba/embedded_v<CACHE_VERSION>.npz`, built on
first use and rebuilt when missing or when `CACHE_VERSION` changes.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Bump when the featurisation, the labels or the split change: old caches are then rebuilt.
CACHE_VERSION = 1
SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLITS = ('train', 'validation', 'test')
# A fragment present in fewer molecules (1% of the set) would leave validation/test with a
# handful of positives: its average precision would be noise.
MIN_POSITIVES_PER_TASK = 50

# OGB's vocabularies (ogb/utils/features.py, `allowable_features`). 'misc' is the last entry of a
# list that has one; values outside a list without 'misc' raise, as in OGB.
MISC = 'misc'
ATOMIC_NUM_VOCAB = tuple(range(1, 119)) + (MISC,)
CHIRALITY_VOCAB = ('CHI_UNSPECIFIED', 'CHI_TETRAHEDRAL_CW', 'CHI_TETRAHEDRAL_CCW', 'CHI_OTHER',
                   MISC)
DEGREE_VOCAB = tuple(range(11)) + (MISC,)
FORMAL_CHARGE_VOCAB = tuple(range(-5, 6)) + (MISC,)
NUM_H_VOCAB = tuple(range(9)) + (MISC,)
NUM_RADICAL_E_VOCAB = tuple(range(5)) + (MISC,)
HYBRIDIZATION_VOCAB = ('SP', 'SP2', 'SP3', 'SP3D', 'SP3D2', MISC)
IS_AROMATIC_VOCAB = (False, True)
IS_IN_RING_VOCAB = (False, True)
BOND_TYPE_VOCAB = ('SINGLE', 'DOUBLE', 'TRIPLE', 'AROMATIC', MISC)
BOND_STEREO_VOCAB = ('STEREONONE', 'STEREOZ', 'STEREOE', 'STEREOCIS', 'STEREOTRANS', 'STEREOANY')
IS_CONJUGATED_VOCAB = (False, True)

NUM_ATOM_FEATURES = 9
NUM_BOND_FEATURES = 3


def _index_or_misc(vocab: Sequence[Any], value: Any) -> int:
  """OGB's `safe_index`: the position of `value`, else the last ('misc') position."""
  try:
    return vocab.index(value)
  except ValueError:
    return len(vocab) - 1


def atom_features(atom) -> List[int]:
  """OGB's `atom_to_feature_vector`: 9 vocabulary indices of an RDKit atom.

  Order: atomic number, chirality tag, total degree, formal charge, total number of Hs, radical
  electrons, hybridisation, aromatic, in ring.
  """
  return [
      _index_or_misc(ATOMIC_NUM_VOCAB, atom.GetAtomicNum()),
      _index_or_misc(CHIRALITY_VOCAB, str(atom.GetChiralTag())),
      _index_or_misc(DEGREE_VOCAB, atom.GetTotalDegree()),
      _index_or_misc(FORMAL_CHARGE_VOCAB, atom.GetFormalCharge()),
      _index_or_misc(NUM_H_VOCAB, atom.GetTotalNumHs()),
      _index_or_misc(NUM_RADICAL_E_VOCAB, atom.GetNumRadicalElectrons()),
      _index_or_misc(HYBRIDIZATION_VOCAB, str(atom.GetHybridization())),
      IS_AROMATIC_VOCAB.index(atom.GetIsAromatic()),
      IS_IN_RING_VOCAB.index(atom.IsInRing()),
  ]


def bond_features(bond) -> List[int]:
  """OGB's `bond_to_feature_vector`: 3 vocabulary indices (type, stereo, conjugated)."""
  return [
      _index_or_misc(BOND_TYPE_VOCAB, str(bond.GetBondType())),
      BOND_STEREO_VOCAB.index(str(bond.GetStereo())),
      IS_CONJUGATED_VOCAB.index(bond.GetIsConjugated()),
  ]


def mol_to_graph(mol) -> Dict[str, np.ndarray]:
  """OGB's `smiles2graph` of a parsed molecule (hydrogens implicit).

  Returns:
    `node_feat` int64 [n, 9]; `edge_index` int64 [2, 2b] with both directions of each bond,
    `(i, j)` then `(j, i)`, in RDKit's bond order; `edge_feat` int64 [2b, 3]; `num_nodes` n.
  """
  node_feat = np.array([atom_features(a) for a in mol.GetAtoms()], np.int64)
  node_feat = node_feat.reshape(-1, NUM_ATOM_FEATURES)
  edges, edge_feat = [], []
  for bond in mol.GetBonds():
    i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
    features = bond_features(bond)
    edges += [(i, j), (j, i)]
    edge_feat += [features, features]
  return {
      'node_feat': node_feat,
      'edge_index': np.array(edges, np.int64).reshape(-1, 2).T,
      'edge_feat': np.array(edge_feat, np.int64).reshape(-1, NUM_BOND_FEATURES),
      'num_nodes': len(node_feat),
  }


def smiles_to_graph(smiles: str) -> Optional[Dict[str, np.ndarray]]:
  """`mol_to_graph` of a SMILES string; None when RDKit cannot parse it."""
  from rdkit import Chem  # pylint: disable=import-outside-toplevel
  mol = Chem.MolFromSmiles(smiles)
  return None if mol is None else mol_to_graph(mol)


def fragment_descriptors() -> List[Tuple[str, Callable]]:
  """RDKit's fragment-count descriptors `(name, fn)`, names starting `fr_`, in RDKit's order."""
  from rdkit.Chem import Descriptors  # pylint: disable=import-outside-toplevel
  return [(name, fn) for name, fn in Descriptors.descList if name.startswith('fr_')]


def source_path() -> str:
  """`first_5K.smi` inside the installed rdkit package."""
  from rdkit import RDConfig  # pylint: disable=import-outside-toplevel
  return os.path.join(RDConfig.RDDataDir, 'NCI', 'first_5K.smi')


def default_data_root() -> str:
  """`<repo root>/data` (git-ignored)."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__)))), 'data')


def cache_path(data_root: Optional[str] = None) -> str:
  return os.path.join(data_root or default_data_root(), 'ogbg_molpcba',
                      f'embedded_v{CACHE_VERSION}.npz')


def select_tasks(presence: np.ndarray, min_positives: int = MIN_POSITIVES_PER_TASK) -> np.ndarray:
  """Indices of the task columns to keep, in order.

  Args:
    presence: bool [num_molecules, num_candidate_tasks].
    min_positives: a task needs at least this many positive molecules.

  Returns:
    int [num_tasks]: columns with `>= min_positives` positives whose labels differ from every
    earlier kept column.
  """
  kept: List[int] = []
  for t in range(presence.shape[1]):
    column = presence[:, t]
    if column.sum() < min_positives:
      continue
    if any(np.array_equal(column, presence[:, k]) for k in kept):
      continue
    kept.append(t)
  return np.array(kept, np.int64)


def random_split(num_examples: int, seed: int = SPLIT_SEED,
                 fractions: Sequence[float] = SPLIT_FRACTIONS) -> np.ndarray:
  """Split codes int8 [num_examples] (0 train, 1 validation, 2 test) of a seeded permutation.

  The first `round(fractions[0] * n)` permuted positions are train, the next
  `round(fractions[1] * n)` validation, the rest test.
  """
  order = np.random.default_rng(seed).permutation(num_examples)
  num_train = int(round(fractions[0] * num_examples))
  num_validation = int(round(fractions[1] * num_examples))
  codes = np.empty(num_examples, np.int8)
  codes[order[:num_train]] = 0
  codes[order[num_train:num_train + num_validation]] = 1
  codes[order[num_train + num_validation:]] = 2
  return codes


def _read_smiles(path: str) -> List[str]:
  """The SMILES column of a `.smi` file (first whitespace-separated field, blank lines dropped)."""
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


def build_arrays(smiles_list: Sequence[str]) -> Dict[str, np.ndarray]:
  """Featurises and labels molecules; the arrays of the cache file.

  Returns:
    `smiles` str [G]; `num_nodes`, `num_bonds` int32 [G]; `node_feat` uint8 [sum n, 9];
    `bond_index` int32 [sum b, 2] (atom indices local to the molecule, one row per bond);
    `bond_feat` uint8 [sum b, 3]; `labels` uint8 [G, T]; `task_names` str [T]; `split` int8 [G];
    scalars `num_source_molecules`, `num_skipped`, `cache_version`.
  """
  from rdkit import Chem, RDLogger  # pylint: disable=import-outside-toplevel
  RDLogger.DisableLog('rdApp.*')  # Unparseable SMILES are counted, not printed.
  descriptors = fragment_descriptors()
  kept_smiles, graphs, presence = [], [], []
  for smiles in smiles_list:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
      continue
    kept_smiles.append(smiles)
    graphs.append(mol_to_graph(mol))
    presence.append([fn(mol) > 0 for _, fn in descriptors])
  presence = np.array(presence, bool).reshape(len(graphs), len(descriptors))
  tasks = select_tasks(presence)
  return {
      'smiles': np.array(kept_smiles),
      'num_nodes': np.array([g['num_nodes'] for g in graphs], np.int32),
      'num_bonds': np.array([g['edge_index'].shape[1] // 2 for g in graphs], np.int32),
      'node_feat': np.concatenate([g['node_feat'] for g in graphs]).astype(np.uint8),
      # Every other column of OGB's edge_index is the forward direction of a bond.
      'bond_index': np.concatenate(
          [g['edge_index'][:, ::2].T.reshape(-1, 2) for g in graphs]).astype(np.int32),
      'bond_feat': np.concatenate([g['edge_feat'][::2] for g in graphs]).astype(np.uint8),
      'labels': presence[:, tasks].astype(np.uint8),
      'task_names': np.array([descriptors[t][0] for t in tasks], dtype=str),
      'split': random_split(len(graphs)),
      'num_source_molecules': np.array(len(smiles_list)),
      'num_skipped': np.array(len(smiles_list) - len(graphs)),
      'cache_version': np.array(CACHE_VERSION),
  }


def build_embedded_data(data_root: Optional[str] = None) -> str:
  """Builds the cache file unless a current one exists; returns its path.

  Writing goes through a temporary file and an atomic rename, so concurrent builders (parallel
  test workers) never read a partial file.
  """
  path = cache_path(data_root)
  if os.path.exists(path) and _cache_version(path) == CACHE_VERSION:
    return path
  arrays = build_arrays(_read_smiles(source_path()))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(suffix='.npz', dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez_compressed(f, **arrays)
    os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; the cache is a shared, readable file.
    os.replace(tmp_path, path)
  except BaseException:
    os.remove(tmp_path)
    raise
  return path


def _cache_version(path: str) -> int:
  try:
    with np.load(path) as f:
      return int(f['cache_version'])
  except (OSError, KeyError, ValueError):
    return -1


@dataclasses.dataclass(frozen=True)
class EmbeddedData:
  """The cached arrays (see `build_arrays`) with per-molecule offsets into the ragged arrays."""
  arrays: Dict[str, np.ndarray]
  node_offsets: np.ndarray  # int64 [G + 1]
  bond_offsets: np.ndarray  # int64 [G + 1]

  @property
  def task_names(self) -> Tuple[str, ...]:
    return tuple(str(t) for t in self.arrays['task_names'])

  @property
  def num_tasks(self) -> int:
    return len(self.arrays['task_names'])

  def split_indices(self, split: str) -> np.ndarray:
    """Molecule indices of a split ('train', 'validation', 'test'), in file order."""
    return np.flatnonzero(self.arrays['split'] == SPLITS.index(split))

  def num_examples(self, split: str) -> int:
    return int(np.sum(self.arrays['split'] == SPLITS.index(split)))

  def example(self, index: int) -> Dict[str, np.ndarray]:
    """Molecule `index` in tensorflow-datasets' `ogbg_molpcba` layout (views, stored dtypes).

    Returns:
      `num_nodes` [1], `node_feat` [n, 9], `num_edges` [1], `edge_feat` [b, 3], `edge_index`
      [b, 2] (one row per bond), `labels` [T] (never missing here; tfds marks missing ones NaN).
      tfds gives float32 features and labels; batching casts either to float32.
    """
    nodes = slice(self.node_offsets[index], self.node_offsets[index + 1])
    bonds = slice(self.bond_offsets[index], self.bond_offsets[index + 1])
    return {
        'num_nodes': self.arrays['num_nodes'][index:index + 1],
        'node_feat': self.arrays['node_feat'][nodes],
        'num_edges': self.arrays['num_bonds'][index:index + 1],
        'edge_feat': self.arrays['bond_feat'][bonds],
        'edge_index': self.arrays['bond_index'][bonds],
        'labels': self.arrays['labels'][index],
    }


def load_embedded_data(data_root: Optional[str] = None) -> EmbeddedData:
  """Loads the cache into memory, building it first when missing or stale."""
  with np.load(build_embedded_data(data_root)) as f:
    arrays = {k: f[k] for k in f.files}
  return EmbeddedData(
      arrays=arrays,
      node_offsets=np.concatenate([[0], np.cumsum(arrays['num_nodes'], dtype=np.int64)]),
      bond_offsets=np.concatenate([[0], np.cumsum(arrays['num_bonds'], dtype=np.int64)]))
