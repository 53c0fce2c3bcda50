"""The contract between the harness, the workloads and the submissions (AlgoPerf's API).

It depends on nothing of the harness (`benchmark`), the workloads or the submissions:
`types` (aliases, enums, ShapeTuple), `errors` (BenchmarkError, TrainingCompleteError),
`workload` (the Workload base class and its hooks), `submission` (the submission functions and
the defaults of the optional ones), `sharding` (data-parallel shardings) and `spec` (upstream's
`algoperf.spec` names). docs/contract.md describes it.
"""
