"""One module per deployment format, each with ``export(model, path, fmt, ctx) -> dict`` and
``load(path, fmt, device) -> Predictor`` (:mod:`deploy.base` holds the contract and the format
table), and :mod:`deploy.export`, which builds, verifies and records them all (``t2t export``)."""
