"""Memory probes added as plugins: one file here holding a `MemoryProbe` subclass
(agent.costs) registered with `@PROBES.register` under its `name`. The built-in ones (rss,
pss, nvml, jetson) live in agent/costs.py; the config's `[profiling] memory_probe` choices
are `auto` and every registered name."""
