"""Selection policies added as plugins: one file here holding a `Policy` subclass
(agent.selection) registered with `@POLICIES.register` under its `name`. The built-in ones
(activation, exact, standalone, all) live in agent/selection.py; the config's
`[selection] policy` choices are every registered name."""
