"""Graph inputs: which rows of a layer belong to which example (graph).

With a `jraph.GraphsTuple` input the examples are the graphs (the model output's first axis must
be `n_graph`) and a layer's rows (its input's first axis) are nodes, edges or graphs, matched by
the row count against the tuple's static sizes (`nodes`, `edges` leading axis, `n_node.shape[0]`).
A size that matches several of them is ambiguous: `graph_rows={pattern: 'nodes' | 'edges' |
'graphs'}` (fnmatch on `'/'.join(path)`) resolves it, and without it `kfac.layer_report` raises.
A covered module whose row axis matches nothing is reported as uncovered, with the reason. Which
graphs are padding is the loss mask's business (`kfac.losses.example_weights`): pass the mask,
or jraph's padding graph counts as an example.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import jraph

from kfac.param_paths import LayerPath, match_pattern

ROW_KINDS = ('examples', 'nodes', 'edges', 'graphs')


def graph_sizes(graph: jraph.GraphsTuple) -> Dict[str, int]:
  """Static row counts of a GraphsTuple: total nodes, total edges, graphs."""
  sizes = {'graphs': graph.n_node.shape[0]}
  for kind, features in (('nodes', graph.nodes), ('edges', graph.edges)):
    leaves = jax.tree_util.tree_leaves(features)
    if leaves:
      sizes[kind] = leaves[0].shape[0]
  if graph.senders is not None:
    sizes.setdefault('edges', graph.senders.shape[0])
  return sizes


def row_kind(path: LayerPath, num_rows: int, graph: jraph.GraphsTuple,
             overrides: Optional[Mapping[str, str]]) -> Tuple[Optional[str], Optional[str]]:
  """What a graph layer's rows are: `(row kind, None)` or `(None, reason it is uncovered)`.

  Raises:
    ValueError: a row count that matches several of nodes/edges/graphs and that `overrides`
      does not resolve, or an override naming an unknown row kind or the wrong count.
  """
  name = '/'.join(path)
  sizes = graph_sizes(graph)
  override = match_pattern(path, overrides)
  if override is not None:
    if override not in sizes:
      raise ValueError(f'graph_rows for {name!r} is {override!r}; expected one of {sorted(sizes)}')
    if sizes[override] != num_rows:
      raise ValueError(f'graph_rows says {name!r} has {override} rows ({sizes[override]}), but '
                       f'its input has {num_rows} rows')
    return override, None
  candidates = [kind for kind, size in sizes.items() if size == num_rows]
  if len(candidates) > 1:
    raise ValueError(
        f'layer {name!r} has {num_rows} rows, which matches {" and ".join(candidates)} of the '
        f'GraphsTuple; pass graph_rows={{{name!r}: one of {candidates}}} (fnmatch patterns)')
  if not candidates:
    return None, (f'row axis of size {num_rows} matches no node ({sizes.get("nodes")}), edge '
                  f'({sizes.get("edges")}) or graph ({sizes["graphs"]}) count')
  return candidates[0], None


class RowGroups(NamedTuple):
  """How the rows of one layer call belong to the N examples.

  Attributes:
    segment_ids: `[T]` example index of every row (graph layers on nodes or edges), or None
      when row `t` is example `t`.
    example_weights: `[N]` 1 for valid examples, 0 for padding ones.
  """

  segment_ids: Optional[jax.Array]
  example_weights: jax.Array


def row_groups(rows: str, num_rows: int, inputs: Any, example_weights: jax.Array) -> RowGroups:
  """The `RowGroups` of a layer call whose rows are `rows` (a `ROW_KINDS` entry).

  Node and edge rows get segment ids `repeat(arange(n_graph), n_node | n_edge)` with the static
  row count as `total_repeat_length`, so this traces under `jit`.
  """
  if rows in ('examples', 'graphs'):
    return RowGroups(segment_ids=None, example_weights=example_weights)
  counts = inputs.n_node if rows == 'nodes' else inputs.n_edge
  segment_ids = jnp.repeat(jnp.arange(counts.shape[0]), counts, total_repeat_length=num_rows)
  return RowGroups(segment_ids=segment_ids, example_weights=example_weights)


def per_example_sum(values: jax.Array, groups: RowGroups) -> jax.Array:
  """`[T, ...] -> [N, ...]`: sums the rows of every example."""
  if groups.segment_ids is None:
    return values
  return jax.ops.segment_sum(values, groups.segment_ids,
                             num_segments=groups.example_weights.shape[0],
                             indices_are_sorted=True)


def row_weights(groups: RowGroups) -> jax.Array:
  """`[T]`: the weight (1 valid, 0 padding) of every row's example."""
  if groups.segment_ids is None:
    return groups.example_weights
  return groups.example_weights[groups.segment_ids]
