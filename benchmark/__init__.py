"""The AlgoPerf-style harness: the trial loop and experiments, tuning, results, scoring, report, CLI
(the contract it runs against is the package `contract/`).

jaxlib's CPU linear algebra (`eigh`, K-FAC's inverses) calls scipy's LAPACK, whose OpenBLAS
spawns one thread per core and spin-waits: on a 2-core machine shared with XLA's own threads a
257x257 `eigh` took 2.1 s against 8 ms single-threaded (docs/bench_kfac_step.md). The harness
therefore pins OpenBLAS to one thread unless the user set it; this must happen before numpy
or jax is first imported.
"""

import os

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
