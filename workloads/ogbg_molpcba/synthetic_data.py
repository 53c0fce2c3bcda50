"""Random molecules in tensorflow-datasets' `ogbg_molpcba` example format, for benchmarks that
need batches of the real shapes without the data (`input_pipeline.batch_examples` pads them like
real molecules)."""

from __future__ import annotations

from typing import List

import numpy as np

from workloads.ogbg_molpcba.embedded_data import NUM_ATOM_FEATURES, NUM_BOND_FEATURES
from workloads.ogbg_molpcba.input_pipeline import Example

# Label statistics of the random molecules: a present label is positive with this probability,
# and each label is missing (NaN) with the other.
POSITIVE_FRACTION = 0.3
MISSING_FRACTION = 0.2


def synthetic_molecules(rng: np.random.Generator, count: int, num_tasks: int,
                        mean_nodes: int = 16) -> List[Example]:
  """`count` random molecules: a chain of `mean_nodes / 2 .. 3 mean_nodes / 2` atoms (uniform)
  closed by two random ring bonds, so about `mean_nodes` atoms and `mean_nodes + 1` bonds
  (`2 mean_nodes + 2` directed edges); categorical atom and bond features; labels positive,
  negative or missing (`POSITIVE_FRACTION`, `MISSING_FRACTION`)."""
  examples = []
  low, high = mean_nodes // 2, mean_nodes + mean_nodes // 2
  for _ in range(count):
    num_nodes = int(rng.integers(low, high + 1))
    chain = np.stack([np.arange(num_nodes - 1), np.arange(1, num_nodes)], axis=1)
    ring = rng.integers(0, num_nodes, (2, 2))
    edge_index = np.concatenate([chain, ring]).astype(np.int64)
    labels = (rng.random(num_tasks) < POSITIVE_FRACTION).astype(np.float32)
    labels[rng.random(num_tasks) < MISSING_FRACTION] = np.nan
    examples.append({
        'num_nodes': np.array([num_nodes]),
        'node_feat': rng.integers(0, 5, (num_nodes, NUM_ATOM_FEATURES)).astype(np.float32),
        'edge_feat': rng.integers(0, 3, (len(edge_index), NUM_BOND_FEATURES)).astype(np.float32),
        'edge_index': edge_index, 'labels': labels})
  return examples
