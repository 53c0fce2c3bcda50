"""Inverse schemes of one Kronecker factor: per-update time and peak memory of `eigh`,
`cholesky`, `rsvd`, `brand` and B-KFAC-c's `correction` (RS-KFAC, B-KFAC; kfac/lowrank.py,
docs/bench_inverses.md).

One *update* is what a scheme does, with statistics and inverses due every step, to turn the
batch's rows `X [n, d]` into a fresh decomposition of the exponential average
`F' = (1 - w) F + w X^T X` of a factor of side `d`:

* `eigh`: the average (`O(n d^2)`), then `eigh(F')` (`O(d^3)`), as the 'eigh' block;
* `cholesky`: the average, then the Cholesky factor of `F' + lambda I` (`O(d^3 / 3)`), as the
  'cholesky' block (kfac.blocks.cholesky.damped_cholesky);
* `rsvd`: the average, then a rank-`r` randomised eigendecomposition (`O(d^2 r)` per pass; 10
  oversampling columns, 2 power iterations, the `BlockOptions` defaults), as the 'rsvd' block;
* `brand`: Brand's online update of the rank-`r` decomposition by `X` (`O(d (r + n)^2)`, no
  `[d, d]` matrix), as the 'brand' block;
* `correction`: B-KFAC-c's correction alone (the 'brand_corrected' block's inverse step): the
  average, then Rayleigh-Ritz on `round(0.2 r + 1)` of the rank-`r` basis' columns
  (`kfac.lowrank.corrected`, `O(n d^2 + d^2 k)`); the block adds it to Brand's update every
  `T_inv` steps.

`eigh` and `cholesky` do not depend on the rank: they have one row per `(d, n)` with rank
`null`. Each program is compiled ahead of time (`jit(...).lower(...).compile()`), run once to
warm up, then `--repeats` times; the table shows the median. Peak memory is XLA's account of the
compiled program (`memory_analysis()`: arguments + outputs + temporaries - aliased; see
benchmark/environment.py). The issue's goals are checked at rank 64 and 32 rows.

Output: docs/bench_inverses.md and docs/bench_inverses.png, and as the last line of stdout the
JSON list of rows `{method, d, rank, rows, seconds, peak_mib}`. The default sizes need an idle
machine (`eigh` at d = 4096 takes tens of seconds on 2 CPU cores); `--quick` runs tiny sizes
with 2 repeats and XLA's backend optimisation off, a smoke run whose times are not the benchmark.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # See benchmark/__init__.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from benchmark import environment  # noqa: E402
from kfac import lowrank  # noqa: E402
from kfac.blocks import BlockOptions  # noqa: E402
from kfac.blocks.cholesky import damped_cholesky  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool('quick', False, 'Tiny sizes, 2 repeats: a smoke run (not the benchmark).')
flags.DEFINE_list('dims', ['256', '512', '1024', '2048', '4096'], 'Factor sides d.')
flags.DEFINE_list('ranks', ['16', '64'], 'Ranks r of rsvd and brand.')
flags.DEFINE_list('rows', ['32', '128'], 'Batch rows n per update.')
flags.DEFINE_list('methods', ['eigh', 'cholesky', 'rsvd', 'brand', 'correction'],
                  'Schemes to time.')
flags.DEFINE_integer('repeats', 5, 'Timed runs per program (median reported).')
flags.DEFINE_string('output_dir', None, 'Where bench_inverses.md and .png are written '
                    '(default: docs/, or a new temporary folder with --quick).')

QUICK_DIMS, QUICK_RANKS, QUICK_ROWS, QUICK_REPEATS = (32, 64), (8,), (8,), 2
DAMPING = 1e-3
EMA_WEIGHT = 0.05
LOWRANK_METHODS = ('rsvd', 'brand', 'correction')
# The goals (at rank 64, 32 rows): Brand's time grows at most 2.5x from d = 1024 to
# 4096 while eigh's grows at least 20x; at d = 4096 Brand is at least 20x faster than eigh.
GOAL_RANK, GOAL_ROWS = 64, 32
GOAL_BRAND_GROWTH, GOAL_EIGH_GROWTH, GOAL_SPEEDUP = 2.5, 20.0, 20.0


def average(factor: jax.Array, rows: jax.Array) -> jax.Array:
  """`(1 - w) F + w X^T X`."""
  return (1 - EMA_WEIGHT) * factor + EMA_WEIGHT * rows.T @ rows


def update_program(method: str, dim: int, rank: Optional[int], num_rows: int
                   ) -> Tuple[Callable[..., Any], Tuple[Any, ...]]:
  """`(function, arguments)` of one update of `method` (see the module docstring)."""
  keys = jax.random.split(jax.random.PRNGKey(dim + num_rows), 3)
  rows = jax.random.normal(keys[0], (num_rows, dim)) / jnp.sqrt(num_rows)
  mixing = jax.random.normal(keys[1], (dim, dim)) / jnp.sqrt(dim)
  factor = mixing @ mixing.T
  options = BlockOptions()
  if method == 'eigh':
    return (lambda f, x: jnp.linalg.eigh(average(f, x))), (factor, rows)
  if method == 'cholesky':
    return (lambda f, x: damped_cholesky(average(f, x), DAMPING, options.eigh_dtype)), (factor,
                                                                                          rows)
  if method == 'rsvd':
    def rsvd(f, x, key):
      return lowrank.randomized_eigh(average(f, x), rank, key, options.oversampling,
                                     options.power_iterations)
    return rsvd, (factor, rows, keys[2])
  if method == 'brand':
    eigen = lowrank.randomized_eigh(factor, rank, keys[2])
    return (lambda e, x: lowrank.brand_update(e, x, EMA_WEIGHT)), (eigen, rows)
  if method == 'correction':
    eigen = lowrank.randomized_eigh(factor, rank, keys[2])
    columns = lowrank.correction_columns(eigen.values.shape[0], options.correction_fraction)
    return (lambda e, f, x, key: lowrank.corrected(e, average(f, x), key, columns)), (
        eigen, factor, rows, keys[2])
  raise ValueError(f'unknown method {method!r}')


def time_update(method: str, dim: int, rank: Optional[int], num_rows: int, repeats: int
                ) -> Dict[str, Any]:
  """The row `{method, d, rank, rows, seconds, peak_mib}` of one compiled update program."""
  function, args = update_program(method, dim, rank, num_rows)
  compiled = jax.jit(function).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return dict(method=method, d=dim, rank=rank, rows=num_rows, seconds=statistics.median(times),
              peak_mib=environment.peak_mib(compiled))


def run_all(methods: Sequence[str], dims: Sequence[int], ranks: Sequence[int],
            rows: Sequence[int], repeats: int) -> List[Dict[str, Any]]:
  """Every row: each `(d, n)`, each method, each rank (low-rank methods, ranks `<= d`)."""
  results = []
  for dim in dims:
    for num_rows in rows:
      for method in methods:
        for rank in (ranks if method in LOWRANK_METHODS else (None,)):
          if rank is not None and rank > dim:
            continue
          results.append(time_update(method, dim, rank, num_rows, repeats))
          print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  return results


def find(results: List[Dict[str, Any]], method: str, dim: int) -> Optional[float]:
  """Seconds of `method` at side `dim`, rank `GOAL_RANK` (None for eigh), `GOAL_ROWS` rows."""
  rank = GOAL_RANK if method in LOWRANK_METHODS else None
  for row in results:
    if (row['method'], row['d'], row['rank'], row['rows']) == (method, dim, rank, GOAL_ROWS):
      return row['seconds']
  return None


def goal_lines(results: List[Dict[str, Any]]) -> List[str]:
  """The issue's goals, measured (or why they could not be checked)."""
  brand = [find(results, 'brand', dim) for dim in (1024, 4096)]
  eigh = [find(results, 'eigh', dim) for dim in (1024, 4096)]
  if None in brand or None in eigh:
    return ['- Goals not checked: they need d = 1024 and 4096, rank 64 and 32 rows.']
  brand_growth, eigh_growth, speedup = brand[1] / brand[0], eigh[1] / eigh[0], eigh[1] / brand[1]
  def verdict(ok):
    return 'met' if ok else 'NOT met'
  return [
      f'- Brand time growth d = 1024 -> 4096: {brand_growth:.2f}x (goal <= {GOAL_BRAND_GROWTH}x: '
      f'{verdict(brand_growth <= GOAL_BRAND_GROWTH)})',
      f'- eigh time growth d = 1024 -> 4096: {eigh_growth:.1f}x (goal >= {GOAL_EIGH_GROWTH}x: '
      f'{verdict(eigh_growth >= GOAL_EIGH_GROWTH)})',
      f'- Brand vs eigh at d = 4096: {speedup:.1f}x faster (goal >= {GOAL_SPEEDUP}x: '
      f'{verdict(speedup >= GOAL_SPEEDUP)})']


def markdown(results: List[Dict[str, Any]], command: str) -> str:
  """docs/bench_inverses.md: the command, the machine, the goals and the table."""
  lines = ['# Inverse schemes: time and memory of one factor update', '',
           f'Command: `{command}`. One update turns a batch of `n` rows into a fresh '
           'decomposition of the exponential average of a `d x d` factor (see the docstring of '
           'scripts/bench_inverses.py); median of the timed runs after one warm-up run, '
           'compilation excluded; peak memory from XLA\'s `memory_analysis()` of the program.', '',
           *environment.machine_lines(), '', '## Goals (rank 64, 32 rows)', '', *goal_lines(results),
           '', '| method | d | rank | rows n | ms per update | peak MiB |',
           '|---|---:|---:|---:|---:|---:|']
  for row in results:
    rank = '-' if row['rank'] is None else row['rank']
    lines.append(f"| {row['method']} | {row['d']} | {rank} | {row['rows']} | "
                 f"{1e3 * row['seconds']:.2f} | {row['peak_mib']:.1f} |")
  return '\n'.join(lines) + '\n'


def plot(results: List[Dict[str, Any]], path: str) -> None:
  """Seconds per update against d (log-log), one panel per row count."""
  row_counts = sorted({row['rows'] for row in results})
  figure, axes = plt.subplots(1, len(row_counts), figsize=(6 * len(row_counts), 4.5),
                              squeeze=False)
  for axis, num_rows in zip(axes[0], row_counts):
    series = sorted({(row['method'], row['rank']) for row in results if row['rows'] == num_rows},
                    key=lambda key: (key[0], key[1] or 0))
    for method, rank in series:
      points = sorted((row['d'], row['seconds']) for row in results
                      if (row['method'], row['rank'], row['rows']) == (method, rank, num_rows))
      label = method if rank is None else f'{method} r={rank}'
      axis.plot(*zip(*points), marker='o', label=label)
    axis.set(xscale='log', yscale='log', xlabel='factor side d', ylabel='seconds per update',
             title=f'n = {num_rows} rows per batch')
    axis.grid(True, which='both', alpha=0.3)
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.quick:  # Compilation dominates tiny programs: XLA's backend optimisation off.
    jax.config.update('jax_disable_most_optimizations', True)
    dims, ranks, rows, repeats = QUICK_DIMS, QUICK_RANKS, QUICK_ROWS, QUICK_REPEATS
  else:
    dims, ranks, rows = ([int(v) for v in values] for values in (FLAGS.dims, FLAGS.ranks,
                                                                  FLAGS.rows))
    repeats = FLAGS.repeats
  output_dir = FLAGS.output_dir or (tempfile.mkdtemp() if FLAGS.quick else 'docs')
  os.makedirs(output_dir, exist_ok=True)  # Before the timings: a bad path fails first.
  results = run_all(FLAGS.methods, dims, ranks, rows, repeats)
  command = 'python scripts/bench_inverses.py' + (' --quick' if FLAGS.quick else '')
  with open(os.path.join(output_dir, 'bench_inverses.md'), 'w') as file:
    file.write(markdown(results, command))
  plot(results, os.path.join(output_dir, 'bench_inverses.png'))
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
