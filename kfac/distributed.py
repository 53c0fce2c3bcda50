"""Data-parallel K-FAC inverses: each device decomposes a balanced share of the layers.

Runs inside `jax.shard_map` over one data axis of a `Mesh` (no `pmap`), so it works under
`jax.jit` with `NamedSharding`-placed arguments, on one host or many. The statistics' side (one
all-reduce per statistics step) is `kfac.distributed_statistics`.

The inverse step decomposes every layer's factors (`eigh` costs about `side^3`
per factor). `assign_layers` gives each layer to one device by longest-processing-time-first
greedy on those costs (makespan at most `4/3 - 1/(3 D)` of the optimum for `D` devices, Graham
1969). `invert_on_owners` then runs, on device `d`, the per-layer `invert` functions of the
layers assigned to `d` only (`lax.switch` on `lax.axis_index` over one branch per device, so the
other devices' decompositions are not even in the branch), fills the other layers' results with
zeros, and shares them with ONE all-reduce: every result leaf is bitcast to `uint32`, summed over
the axis (the owner's bits plus zeros: exact, NaNs and all) and bitcast back. Every device ends
with every layer's new state. Communication per inverse step: one all-reduce of the new leaves'
bytes (leaves an `invert` passes through unchanged, like a Kronecker block's factors next to
their new eigendecompositions, are found in its jaxpr and not sent). Wall-clock of the
decompositions: `max_d sum_{l owned by d} cost_l` instead of `sum_l cost_l`.

Use, in a train step jitted over a `Mesh` with the batch sharded along axis `'batch'`:

    new_states = distributed_invert({path: block.invert for path, block in blocks.items()},
                                    states, mesh, 'batch', damping)
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Dict, Hashable, List, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

Layer = Hashable
InvertFn = Callable[..., Any]  # (state, *operands) -> new state


def layer_cost(state: Any) -> float:
  """Cost of decomposing a layer's state: `side^3` for every square matrix leaf `[..., s, s]`
  (batch dimensions multiply), 0 for vectors and scalars."""
  return float(sum(np.prod(leaf.shape[:-2]) * leaf.shape[-1] ** 3
                   for leaf in jax.tree_util.tree_leaves(state)
                   if len(leaf.shape) >= 2 and leaf.shape[-1] == leaf.shape[-2]))


def assign_layers(costs: Mapping[Layer, float], num_devices: int) -> Dict[Layer, int]:
  """Longest-processing-time-first: layers by decreasing cost, each to the least-loaded device.

  Deterministic (ties: first layer of `costs`, lowest device index), so every process of a
  multi-host job computes the same assignment.

  Returns:
    `{layer: device index in [0, num_devices)}`.
  """
  if num_devices < 1:
    raise ValueError(f'num_devices must be >= 1, got {num_devices}')
  layers = list(costs)
  loads = [(0.0, device) for device in range(num_devices)]
  assignment = {}
  for layer in sorted(layers, key=lambda name: -costs[name]):  # Stable: ties in given order.
    load, device = heapq.heappop(loads)
    assignment[layer] = device
    heapq.heappush(loads, (load + costs[layer], device))
  return {layer: assignment[layer] for layer in layers}


def device_loads(assignment: Mapping[Layer, int], costs: Mapping[Layer, float],
                 num_devices: int) -> List[float]:
  """Total cost per device of an assignment; its maximum is the inverse step's critical path."""
  loads = [0.0] * num_devices
  for layer, device in assignment.items():
    loads[device] += costs[layer]
  return loads


def _to_words(leaf: jax.Array) -> jax.Array:
  """The bits of `leaf` as `uint32` words (any 1, 2, 4 or 8-byte dtype; bool as 0/1)."""
  if leaf.dtype == jnp.bool_:
    return leaf.astype(jnp.uint32)
  if leaf.dtype.itemsize == 8:
    return jax.lax.bitcast_convert_type(leaf, jnp.uint32)  # [..., 2]
  bits = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f'uint{8 * leaf.dtype.itemsize}'))
  return bits.astype(jnp.uint32)


def _from_words(words: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
  """Inverse of `_to_words`."""
  if like.dtype == jnp.bool_:
    return words.astype(jnp.bool_)
  if like.dtype.itemsize == 8:
    return jax.lax.bitcast_convert_type(words.reshape(like.shape + (2,)), like.dtype)
  bits = words.astype(jnp.dtype(f'uint{8 * like.dtype.itemsize}'))
  return jax.lax.bitcast_convert_type(bits.reshape(like.shape), like.dtype)


def _word_count(like: jax.ShapeDtypeStruct) -> int:
  return int(np.prod(like.shape)) * (2 if like.dtype.itemsize == 8 else 1)


def share_from_owners(tree: Any, axis_name: str) -> Any:
  """Every device gets each leaf from the one device that holds it, the others holding zeros:
  one all-reduce of the leaves' bits as `uint32` (owner's bits + 0 = owner's bits, exactly)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if not leaves:
    return tree
  words = jax.lax.psum(jnp.concatenate([jnp.ravel(_to_words(leaf)) for leaf in leaves]),
                       axis_name)
  offsets = np.cumsum([0] + [_word_count(leaf) for leaf in leaves])
  return jax.tree_util.tree_unflatten(
      treedef, [_from_words(words[start:stop], leaf)
                for start, stop, leaf in zip(offsets[:-1], offsets[1:], leaves)])


def invert_on_owners(invert_fns: Mapping[Layer, InvertFn], states: Mapping[Layer, Any],
                     assignment: Mapping[Layer, int], axis_name: str, num_devices: int,
                     *operands: Any) -> Dict[Layer, Any]:
  """Each device runs `invert_fns[layer](states[layer], *operands)` for its layers only; all
  devices end with every result. Call inside `jax.shard_map` (states and operands replicated).

  Args:
    invert_fns: `{layer: (state, *operands) -> new state}`, any per-layer function (a block's
      `invert`: eigh, Cholesky, randomised SVD, ...).
    states: `{layer: state pytree}`, the same on every device.
    assignment: `{layer: device}` (`assign_layers`), the same on every device.
    axis_name: the mesh axis over which the layers are spread (`num_devices` long).
    num_devices: size of that axis.
    *operands: replicated arrays passed to every `invert` (e.g. a traced damping).

  Returns:
    `{layer: new state}`, bitwise the owner device's result, on every device. Leaves an
    `invert` returns unchanged from its state are not communicated.
  """
  layers = list(states)
  traced = {layer: jax.make_jaxpr(invert_fns[layer], return_shape=True)(states[layer], *operands)
            for layer in layers}
  kept = {layer: _passed_through(jaxpr.jaxpr, len(jax.tree_util.tree_leaves(states[layer])))
          for layer, (jaxpr, _) in traced.items()}

  def new_leaves(layer: Layer, leaves: List[Any]) -> List[Any]:
    return [leaf for leaf, source in zip(leaves, kept[layer]) if source is None]

  def branch(device: int) -> Callable[..., Dict[Layer, Any]]:
    def run(layer_states, branch_operands):
      return {layer: new_leaves(layer, jax.tree_util.tree_leaves(
                  invert_fns[layer](layer_states[layer], *branch_operands)
                  if assignment[layer] == device else
                  jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), traced[layer][1])))
              for layer in layers}
    return run

  mine = jax.lax.switch(jax.lax.axis_index(axis_name),
                        [branch(device) for device in range(num_devices)],
                        dict(states), tuple(operands))
  shared = share_from_owners(mine, axis_name)
  results = {}
  for layer in layers:
    state_leaves, computed = jax.tree_util.tree_leaves(states[layer]), iter(shared[layer])
    leaves = [next(computed) if source is None else state_leaves[source]
              for source in kept[layer]]
    results[layer] = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(traced[layer][1]), leaves)
  return results


def _passed_through(jaxpr: Any, num_state_leaves: int) -> List[Any]:
  """For each output of `jaxpr`: the index of the state leaf (its first `num_state_leaves`
  inputs) it returns unchanged, else None. Such leaves (a block's factors, next to their new
  decomposition) are already on every device and are not sent."""
  inputs = {id(var): index for index, var in enumerate(jaxpr.invars[:num_state_leaves])}
  return [inputs.get(id(var)) for var in jaxpr.outvars]


def distributed_invert(invert_fns: Mapping[Layer, InvertFn], states: Mapping[Layer, Any],
                       mesh: Mesh, axis_name: str, *operands: Any,
                       costs: Mapping[Layer, float] | None = None) -> Dict[Layer, Any]:
  """`{layer: invert_fns[layer](states[layer], *operands)}`, each layer decomposed on one device
  of `mesh`'s `axis_name` (balanced by `costs`, default `layer_cost` of each state) and the
  results replicated on all. Jittable; the assignment is static (from shapes).

  Returns:
    The new states, replicated over `mesh`.
  """
  num_devices = mesh.shape[axis_name]
  if costs is None:
    costs = {layer: layer_cost(state) for layer, state in states.items()}
  assignment = assign_layers(costs, num_devices)

  def on_device(device_states, *device_operands):
    return invert_on_owners(invert_fns, device_states, assignment, axis_name, num_devices,
                            *device_operands)

  replicated = PartitionSpec()
  return jax.shard_map(on_device, mesh=mesh, in_specs=(replicated,) * (1 + len(operands)),
                       out_specs=replicated)(dict(states), *operands)
