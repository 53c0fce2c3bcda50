"""The contract between the harness, the workloads and the submissions (AlgoPerf's API).

It depends on nothing of the harness (`benchmark`), the workloads or the submissions: `types`
(aliases and enums), `workload` (the Workload base class) and `errors` (the user-facing error).
"""
