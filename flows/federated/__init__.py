"""Federated learning: only model updates travel, never the clients' data.

This package is pure numpy: no Prefect, no torch, no I/O, so every rule can be tested on small
hand-computed arrays.

- :mod:`flows.federated.aggregate`: the aggregation rules as pure functions over
  ``list[tuple[dict[str, numpy.ndarray], int]]`` (weights by name, number of examples):
  :func:`~flows.federated.aggregate.fedavg`, :func:`~flows.federated.aggregate.median`,
  :func:`~flows.federated.aggregate.trimmed_mean`, :func:`~flows.federated.aggregate.krum`.
- :mod:`flows.federated.validate`: checks every client update against the global model before
  aggregation (finite values, names, shapes, dtypes, a norm bound, a cap on example counts).
- :mod:`flows.federated.strategies`: one strategy per module (FedAvg, FedProx, FedAdagrad,
  FedAdam, FedYogi, FedMedian, FedTrimmedAvg, Krum, Multi-Krum) around one concrete round step
  whose failures are explicit results, never exceptions deep inside.
"""
