"""Tools for the demo, the tests and the benchmarks, never installed on a device's path of
work: a local Mosquitto on a free port (`devtools.broker`) and a subscriber that collects
what a real MQTT client sees (`devtools.subscriber`). The device package `agent` never
imports them (an import-linter contract in pyproject.toml)."""
