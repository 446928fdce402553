"""`mlink-agent`: run the agent, check a config, or show what it would select."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from agent.config import AgentConfig, BudgetConfig, ConfigError, load_config
from agent.recorder import record_to_file
from agent.scheduler import Agent
from agent.selection import POLICIES, Problem, SelectionError, get_policy
from agent.transport import PublishError
from links_tflite import package_version
from links_tflite.bundle import BundleError
from links_tflite.interpreter import InterpreterUnavailable
from links_tflite.recording import RecordingError

log = logging.getLogger("agent")

EXPECTED_ERRORS = (ConfigError, BundleError, RecordingError, SelectionError, PublishError,
                   InterpreterUnavailable, FileNotFoundError, RuntimeError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlink-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent against the configured broker")
    run.add_argument("--config", required=True, help="agent config (TOML)")
    run.add_argument("--frames", type=int, default=None, help="stop after N frames")
    check = sub.add_parser("validate-config", help="exit 0 if the config is valid and what it "
                                                   "names can be used (files, bundle, source, "
                                                   "state dir), 1 if not")
    check.add_argument("config")
    check.add_argument("--connect", action="store_true",
                       help="also log in to the configured broker (login, TLS) and log out")
    select = sub.add_parser("select", help="measure costs on this box and print, for every "
                                          "policy, the chosen set, its expected agreement and "
                                          "its use of the budget (the loop does not run)")
    select.add_argument("--config", required=True)
    select.add_argument("--budget", default=None, metavar="memory_mb=..,delay_ms=..",
                        help="replace the config's [budget] for this run")
    select.add_argument("--json", action="store_true", help="print JSON")
    rec = sub.add_parser("record", help="run all models on the source and write a recording")
    rec.add_argument("--config", required=True)
    rec.add_argument("--frames", type=int, required=True)
    rec.add_argument("--out", type=Path, required=True, help="recording file (.npz)")
    rec.add_argument("--with-frames", action="store_true",
                     help="store the frames too, so the recording can be replayed as a source")
    rec.add_argument("--inputs-only", action="store_true",
                     help="store the frames alone and run no model (replayable later)")
    watch = sub.add_parser("watch", help="live view of the agents' outputs and status")
    watch.add_argument("--config", help="take broker, prefix and device from this config")
    watch.add_argument("--host", default=None, help="broker host (default 127.0.0.1)")
    watch.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    watch.add_argument("--prefix", default=None, help="topic prefix (default mlink)")
    watch.add_argument("--device", default=None, help="one device id (default: every device)")
    watch.add_argument("--duration", type=float, default=None,
                       help="print the view once after this many seconds, then exit")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service import run

    counters, drained = run(args.config, args.frames)
    log.info("done: %d frames at %.1f fps, %d executed, %d predicted and %d prior outputs",
             counters.frames, counters.fps(), counters.executed, counters.predicted,
             counters.prior)
    return 0 if drained else 1


def parse_budget(text: str) -> BudgetConfig:
    """`memory_mb=3.5,delay_ms=2` -> a validated budget; errors name `budget.<key>`."""
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError([("budget", f"{item!r} is not key=value")], "--budget")
        values[key.strip()] = value.strip()
    try:
        return BudgetConfig.model_validate(values)
    except ValidationError as exc:
        errors = [(".".join(["budget", *map(str, e["loc"])]), e["msg"]) for e in exc.errors()]
        raise ConfigError(errors, "--budget") from None


def measured_problem(config: AgentConfig) -> tuple[Agent, Problem]:
    """The agent for `config` with every model's and link's cost measured on the source's
    first frame, and its selection problem under the config's budget (what `select` prints;
    the demo picks its budget from it). Close the agent when done."""
    agent = Agent.from_config(config)
    first = next(agent.source.frames(), None)
    if first is None:
        agent.close()
        raise RecordingError(f"source {config.source_type!r} yielded no frame")
    agent.measure(first)
    return agent, agent.problem()


def cmd_select(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.budget is not None:
        config = config.model_copy(update={"budget": parse_budget(args.budget)})
    agent, problem = measured_problem(config)
    report: dict[str, object] = {"budget": problem.budget, "policies": {}}
    policies: dict[str, object] = {}
    for name in POLICIES:
        try:
            policies[name] = get_policy(name).select(problem).to_dict()
        except SelectionError as exc:
            policies[name] = {"policy": name, "error": str(exc)}
    report["policies"] = policies
    report["costs"] = agent.cost_figures()
    # The configured policy finding nothing that fits is a failure a script must see.
    chosen = policies[config.selection.policy]
    code = 1 if isinstance(chosen, dict) and "error" in chosen else 0
    if args.json:
        print(json.dumps(report, indent=2))
        return code
    print(f"budget: {problem.budget or 'none'} (probe: {agent.executor.probe.name})")
    for model_id, cost in agent.model_costs.items():
        print(f"  model {model_id:<16} memory {cost.get('memory_mb'):9.3f} MB  "
              f"delay {cost.get('delay_ms'):9.4f} ms")
    for (source, target), cost in agent.link_costs.items():
        print(f"  link  {source + '->' + target:<16} memory {cost.get('memory_mb'):9.3f} MB  "
              f"delay {cost.get('delay_ms'):9.4f} ms")
    for name, result in policies.items():
        assert isinstance(result, dict)
        if "error" in result:
            print(f"{name:<11} -> {result['error']}")
            continue
        use = ", ".join(f"{r} {v:.4f}" for r, v in dict(result["use"]).items())
        print(f"{name:<11} active {result['active']} predicted {result['predicted']} "
              f"expected agreement {result['expected_agreement']:.4f} use {use}")
        if "plan" in result:
            actions = dict(dict(result["plan"])["actions"])
            print(f"{'':<11} plan: " + ", ".join(f"{m} {a}" for m, a in actions.items()))
    if code:
        print(f"mlink-agent: the configured policy {config.selection.policy!r} finds nothing "
              f"that fits the budget", file=sys.stderr)
    return code


def cmd_record(args: argparse.Namespace) -> int:
    if args.frames < 1:
        print("mlink-agent: --frames must be at least 1", file=sys.stderr)
        return 2
    recording = record_to_file(load_config(args.config), args.frames, args.out, args.with_frames,
                               args.inputs_only)
    what = ", ".join(recording.models) or "inputs " + ", ".join(sorted(recording.inputs))
    print(f"{args.out}: {len(recording)} frames of {what}")
    for model_id, cost in recording.costs.items():
        print(f"  {model_id}: {cost}")
    return 0
def cmd_watch(args: argparse.Namespace) -> int:
    from agent.config import MqttConfig
    from agent.watch import watch

    mqtt, device = MqttConfig(), args.device
    if args.config:
        config = load_config(args.config)
        mqtt, device = config.mqtt, device or config.device_id
    return watch(args.host or mqtt.host, args.port or mqtt.port, args.prefix or mqtt.prefix,
                 device, args.duration)


def cmd_validate(args: argparse.Namespace) -> int:
    from agent.preflight import preflight

    try:
        config = load_config(args.config)
        problems = preflight(config)
        if args.connect and not problems:
            from agent.transport import try_connect

            refused = try_connect(config.mqtt, config.device_id)
            if refused is not None:
                problems = [("mqtt", refused)]
        if problems:
            raise ConfigError(problems, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    commands = {"run": cmd_run, "validate-config": cmd_validate, "select": cmd_select,
                "record": cmd_record, "watch": cmd_watch}
    try:
        return commands[args.command](args)
    except EXPECTED_ERRORS as exc:
        print(f"mlink-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
