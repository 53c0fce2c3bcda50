"""ogbg-molpcba (AlgoPerf): a GraphNetwork predicting 128 binary assay outcomes per molecule,
scored by mean average precision; `small`/`tiny` configs train on RDKit-derived embedded data.

The workload class is `workload.OgbgMolpcbaWorkload` (imported lazily by `workloads`)."""
