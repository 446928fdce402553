"""`mlink-agent`: run the agent, check a config, or show what it would select."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import ConfigError, load_config
from agent.publisher import PublishError
from agent.recorder import record_to_file
from agent.scheduler import Agent
from agent.selection import SelectionError
from links_tflite.bundle import BundleError
from links_tflite.interpreter import InterpreterUnavailable
from links_tflite.recording import RecordingError

log = logging.getLogger("agent")

EXPECTED_ERRORS = (ConfigError, BundleError, RecordingError, SelectionError, PublishError,
                   InterpreterUnavailable, FileNotFoundError, RuntimeError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlink-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent against the configured broker")
    run.add_argument("--config", required=True, help="agent config (TOML)")
    run.add_argument("--frames", type=int, default=None, help="stop after N frames")
    check = sub.add_parser("validate-config", help="exit 0 if the config is valid, 1 if not")
    check.add_argument("config")
    select = sub.add_parser("select", help="measure costs on this box and print the selection")
    select.add_argument("--config", required=True)
    rec = sub.add_parser("record", help="run all models on the source and write a recording")
    rec.add_argument("--config", required=True)
    rec.add_argument("--frames", type=int, required=True)
    rec.add_argument("--out", type=Path, required=True, help="recording file (.npz)")
    rec.add_argument("--with-frames", action="store_true",
                     help="store the frames too, so the recording can be replayed as a source")
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
    log.info("done: %d frames at %.1f fps, %d executed and %d predicted outputs",
             counters.frames, counters.fps(), counters.executed, counters.predicted)
    return 0 if drained else 1


def cmd_select(args: argparse.Namespace) -> int:
    agent = Agent(load_config(args.config))
    agent.start()
    assert agent.selection is not None
    print(json.dumps({"selection": agent.selection.to_dict(),
                      "costs": agent.status("select")["costs"]}, indent=2))
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    if args.frames < 1:
        print("mlink-agent: --frames must be at least 1", file=sys.stderr)
        return 2
    recording = record_to_file(load_config(args.config), args.frames, args.out, args.with_frames)
    print(f"{args.out}: {len(recording)} frames of {', '.join(recording.models)}")
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
    try:
        load_config(args.config)
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
