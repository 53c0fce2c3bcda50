"""Graph rows (kfac/graph_rows.py): row kinds matched by size, ambiguity, overrides."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import pytest

import kfac
from tests import kfac_oracles as oracles

fast_compilation = oracles.fast_compilation  # autouse: see tests/kfac_oracles.py


class NodeAndGlobalDense(nn.Module):
  """Dense layers on nodes and on graphs (globals from a node segment sum)."""

  @nn.compact
  def __call__(self, graph):
    nodes = jnp.tanh(nn.Dense(3)(graph.nodes))
    segments = jnp.repeat(jnp.arange(graph.n_node.shape[0]), graph.n_node,
                          total_repeat_length=nodes.shape[0])
    pooled = jax.ops.segment_sum(nodes, segments, graph.n_node.shape[0])
    return nn.Dense(2)(pooled)


def _graph(n_node, n_edge):
  num_nodes, num_edges = sum(n_node), sum(n_edge)
  return jraph.GraphsTuple(nodes=jnp.ones((num_nodes, 2)), edges=jnp.ones((num_edges, 1)),
                           senders=jnp.zeros(num_edges, jnp.int32),
                           receivers=jnp.zeros(num_edges, jnp.int32),
                           n_node=jnp.array(n_node), n_edge=jnp.array(n_edge), globals=None)


def test_graph_rows_matched_by_size_ambiguity_raises_and_override_resolves():
  model = NodeAndGlobalDense()
  distinct = _graph([2, 3], [1, 2])
  params = jax.eval_shape(model.init, jax.random.key(0), distinct)
  report = kfac.layer_report(model.apply, params, distinct)
  assert [info.calls[0].rows for info in report.layers.values()] == ['nodes', 'graphs']
  ambiguous = _graph([2, 3], [4, 1])  # 5 nodes and 5 edges
  with pytest.raises(ValueError, match='graph_rows'):
    kfac.layer_report(model.apply, params, ambiguous)
  report = kfac.layer_report(model.apply, params, ambiguous, graph_rows={'Dense_0': 'nodes'})
  assert report.layers['Dense_0',].calls[0].rows == 'nodes'
  with pytest.raises(ValueError, match='n_graph'):
    kfac.layer_report(lambda p, g: model.apply(p, g)[:1], params, distinct)
