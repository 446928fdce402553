"""Model adapters, one file each: a `ModelAdapter` subclass registered in
`agent.models.ADAPTERS` under its `adapter` name, saying what names the model in its config
(`needs`: a `path` or an `entry`). The config's `adapter` choices come from here."""
