"""AlgoPerf's ogbg-molpcba GraphNetwork (`algoperf/workloads/ogbg/ogbg_jax/models.py`).

Encoder: `node_embedding` and `edge_embedding`, Dense layers from the raw float features to
`latent_dim`. Globals start as zeros [n_graph, num_outputs]. Then `num_message_passing_steps`
`jraph.GraphNetwork` blocks, each updating edges, then nodes, then globals with an MLP on the
concatenated inputs (sum aggregation):

  edge'   = MLP_e([edge, node[sender], node[receiver], global])
  node'   = MLP_n([node, sum of sent edge', sum of received edge', global])
  global' = MLP_g([sum of node', sum of edge', global])

each MLP being, per hidden width, Dense -> LayerNorm -> ReLU -> Dropout (no residual). A final
Dense maps the globals to `num_outputs` logits.

Module names follow AlgoPerf's parameter tree: `node_embedding`, `edge_embedding`, `Dense_k`
and `LayerNorm_k` numbered in call order (step by step: edge, node, global MLPs), and the decoder
`Dense_{num_message_passing_steps * 3 * len(hidden_dims)}` (see `decoder_name`). Every Dense is
called exactly once per forward pass, so K-FAC layer paths map one-to-one to parameters.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from workloads.layers import Dropout

# Each message-passing step has three MLPs: edge, node, global.
MLPS_PER_STEP = 3
# AlgoPerf's dropout after every hidden layer of the MLPs.
DROPOUT_RATE = 0.1


def decoder_name(num_message_passing_steps: int, hidden_dims: Sequence[int]) -> str:
  """The auto-assigned name of the output Dense (AlgoPerf's full model: `Dense_15`)."""
  return f'Dense_{num_message_passing_steps * MLPS_PER_STEP * len(hidden_dims)}'


def _mlp(hidden_dims: Sequence[int], dropout: Callable[[jax.Array], jax.Array]
         ) -> Callable[..., jax.Array]:
  """An update function for `jraph.GraphNetwork`: concatenates its arguments on the last axis,
  then Dense -> LayerNorm -> ReLU -> Dropout per width in `hidden_dims`. Its modules are created
  in the calling (compact) module, so they are named there in call order."""

  @jraph.concatenated_args
  def update_fn(inputs: jax.Array) -> jax.Array:
    x = inputs
    for width in hidden_dims:
      x = nn.Dense(features=width)(x)
      x = nn.LayerNorm()(x)
      x = nn.relu(x)
      x = dropout(x)
    return x

  return update_fn


class GNN(nn.Module):
  """The GraphNetwork; `__call__(graph, train, dropout_rate)` returns logits
  [n_graph, num_outputs].

  Attributes:
    num_outputs: number of tasks (128 on ogbg-molpcba).
    latent_dim: width of the node and edge embeddings.
    hidden_dims: widths of the layers of each MLP.
    num_message_passing_steps: number of GraphNetwork blocks.
  """
  num_outputs: int
  latent_dim: int = 256
  hidden_dims: Tuple[int, ...] = (256,)
  num_message_passing_steps: int = 5

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, train: bool,
               dropout_rate: jax.typing.ArrayLike = DROPOUT_RATE) -> jax.Array:
    """Args: graph with nodes [N, 9], edges [E, 3] (float32), senders/receivers [E], n_node and
    n_edge [n_graph] (its globals are ignored); train: apply dropout (needs a 'dropout' rng);
    dropout_rate: after every hidden layer, in training mode (a float or a traced scalar).

    Returns: logits [n_graph, num_outputs]."""
    dropout_layer = Dropout()

    def dropout(x: jax.Array) -> jax.Array:
      return dropout_layer(x, dropout_rate, deterministic=not train)

    graph = graph._replace(globals=jnp.zeros([graph.n_node.shape[0], self.num_outputs]))
    embed = jraph.GraphMapFeatures(
        embed_node_fn=nn.Dense(self.latent_dim, name='node_embedding'),
        embed_edge_fn=nn.Dense(self.latent_dim, name='edge_embedding'))
    graph = embed(graph)
    for _ in range(self.num_message_passing_steps):
      graph = jraph.GraphNetwork(
          update_edge_fn=_mlp(self.hidden_dims, dropout),
          update_node_fn=_mlp(self.hidden_dims, dropout),
          update_global_fn=_mlp(self.hidden_dims, dropout))(graph)
    decode = jraph.GraphMapFeatures(embed_global_fn=nn.Dense(self.num_outputs))
    return decode(graph).globals
