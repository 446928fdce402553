"""`mlink-fleet`: the operator's view of many boxes and staged rollouts to them.

    mlink-fleet inventory --host H --port P [--prefix mlink] [--json]
    mlink-fleet apply --host H --port P (--devices a,b | --all | --group G) CHANGE.json
                      [--canary 0.1] [--waves 2] [--window 12] [--agreement-margin 0.02]
                      [--fps-margin 0.25] [--timeout 20]
    mlink-fleet push  ... (the same choices) BUNDLE [--previous OLD_BUNDLE]

`apply` rolls out a config change, `push` a bundle (a folder, or its tar archive); each exits
0 when every box applied it and stayed healthy, 1 when the rollout failed (it rolled back the
failing wave — a bundle only with `--previous` — and stopped), 2 on a usage or connection
error."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from fleet.link import Box, FleetLink
from fleet.rollout import BundlePush, ConfigChange, Outcome, Policy, Rollout, health_of

MAX_CHANGE_BYTES = 64 * 1024


def _connect(args: argparse.Namespace) -> FleetLink:
    link = FleetLink(args.host, args.port, args.prefix)
    time.sleep(args.settle)  # the retained messages arrive
    return link


def _groups(box: Box) -> list[str]:
    groups = box.status.get("groups")
    return [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []


def inventory_rows(boxes: dict[str, Box]) -> list[dict[str, Any]]:
    rows = []
    now = time.monotonic()
    for device in sorted(boxes):
        box = boxes[device]
        health = health_of(box)
        selection = box.status.get("selection") or {}
        rows.append({
            "device": device, "availability": box.availability,
            "state": box.status.get("state"), "groups": _groups(box),
            "models": sorted((box.status.get("models") or {}).keys()),
            "active": selection.get("active"), "use": selection.get("use"),
            "expected_agreement": health.agreement, "fps": health.fps,
            "bundle": box.status.get("bundle"), "version": box.version,
            "last_seen_s": None if box.status_seen is None else round(now - box.status_seen, 1),
        })
    return rows


def cmd_inventory(args: argparse.Namespace) -> int:
    link = _connect(args)
    try:
        rows = inventory_rows(link.boxes())
    finally:
        link.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'device':<20} {'avail':<8} {'state':<9} {'ver':>4} {'agree':>6} {'fps':>6}  "
          f"active")
    for row in rows:
        agreement = "-" if row["expected_agreement"] is None else f"{row['expected_agreement']:.3f}"
        fps = "-" if row["fps"] is None else f"{row['fps']:.1f}"
        print(f"{row['device']:<20} {row['availability'] or '-':<8} {row['state'] or '-':<9} "
              f"{row['version'] if row['version'] is not None else '-':>4} {agreement:>6} "
              f"{fps:>6}  {','.join(row['active'] or []) or '-'}")
    print(f"{len(rows)} box(es)")
    return 0


def read_change(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if len(data) > MAX_CHANGE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_CHANGE_BYTES} bytes")
    def no_constant(name: str) -> Any:
        raise ValueError(f"{path}: {name} is not a number a box takes (numbers must be finite)")

    try:
        change = json.loads(data, parse_constant=no_constant)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply") from None
    if not isinstance(change, dict):
        raise ValueError(f"{path}: a JSON object is needed (the config/set body)")
    return change


def targets(args: argparse.Namespace, boxes: dict[str, Box]) -> list[str]:
    if args.devices:
        chosen = [d.strip() for d in args.devices.split(",") if d.strip()]
        missing = [d for d in chosen if d not in boxes]
        if missing:
            raise ValueError(f"unknown boxes {missing} (known: {sorted(boxes)})")
        return chosen
    if args.group:
        return group_members(boxes, args.group)
    return [d for d, b in boxes.items() if b.availability == "online"]


def group_members(boxes: dict[str, Box], group: str) -> list[str]:
    """The online boxes whose status lists `group` (what `--group` rolls out to)."""
    return [d for d, b in boxes.items() if b.availability == "online" and group in _groups(b)]


def _pair(before: Any, after: Any, attribute: str, digits: int) -> str:
    def one(health: Any) -> str:
        value = getattr(health, attribute) if health is not None else None
        return "-" if value is None else f"{value:.{digits}f}"
    return f"{one(before)}->{one(after)}"


def print_outcome(outcome: Outcome) -> None:
    print(f"{'device':<20} {'wave':<7} {'result':<16} {'version':<9} {'agreement':<13} "
          f"{'fps':<13} detail")
    for box in outcome.boxes:
        wave = "canary" if box.wave == 0 else str(box.wave)
        version = f"{box.version_before}->{box.version_after or '-'}"
        print(f"{box.device:<20} {wave:<7} {box.result:<16} {version:<9} "
              f"{_pair(box.before, box.after, 'agreement', 3):<13} "
              f"{_pair(box.before, box.after, 'fps', 1):<13} {box.detail}")
    if outcome.ok:
        print("rollout complete: every box applied the change and stayed healthy")
    else:
        where = "the canary" if outcome.stopped_at == 0 else f"wave {outcome.stopped_at}"
        print(f"rollout FAILED at {where}: that wave was rolled back; later boxes were not "
              "sent the change")


def bundle_archive(path: Path) -> bytes:
    """A bundle folder as a gzipped tar of its files (the manifest at the top), or the bytes
    of a tar archive as they are."""
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise ValueError(f"{path}: not a bundle folder (no manifest.json)")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                tar.add(file, arcname=str(file.relative_to(path)))
        return buffer.getvalue()
    if path.stat().st_size > BundlePush.MAX_ARCHIVE_BYTES:
        raise ValueError(f"{path}: larger than {BundlePush.MAX_ARCHIVE_BYTES} bytes")
    return path.read_bytes()


def cmd_apply(args: argparse.Namespace) -> int:
    if args.command == "push":
        previous = None if args.previous is None else bundle_archive(Path(args.previous))
        change: ConfigChange | BundlePush = BundlePush(bundle_archive(Path(args.change)),
                                                       previous)
    else:
        change = ConfigChange(read_change(Path(args.change)))
    policy = rollout_policy(args)
    link = _connect(args)
    try:
        devices = targets(args, link.boxes())
        if not devices:
            print("no box to apply the change to", file=sys.stderr)
            return 2
        rollout = Rollout(link, change, policy,
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
        outcome = rollout.run(devices)
    finally:
        link.close()
    print_outcome(outcome)
    return 0 if outcome.ok else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mlink-fleet", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    for name, helptext in (("inventory", "every box under the prefix"),
                           ("apply", "a staged rollout of a config change"),
                           ("push", "a staged rollout of a bundle")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=1883)
        sub.add_argument("--prefix", default="mlink")
        sub.add_argument("--settle", type=float, default=1.0,
                         help="seconds to collect the retained messages first")
        if name == "inventory":
            sub.add_argument("--json", action="store_true")
            continue
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument("--devices", help="comma-separated device ids")
        which.add_argument("--group", help="the online boxes whose status lists this group")
        which.add_argument("--all", action="store_true", help="every online box")
        if name == "apply":
            sub.add_argument("change", help="a JSON file: the config/set body (no version)")
        else:
            sub.add_argument("change", metavar="bundle",
                             help="the bundle: its folder or its tar archive")
            sub.add_argument("--previous", help="the bundle in force now (folder or archive): "
                                                "pushed back to a wave that fails")
        add_rollout_options(sub)
    return top


def add_rollout_options(parser: argparse.ArgumentParser) -> None:
    """The staged rollout's options (`apply`, `push`, and `mlink-train serve`'s rollouts)."""
    parser.add_argument("--canary", type=float, default=0.1, help="share of boxes first")
    parser.add_argument("--waves", type=int, default=2, help="waves after the canary")
    parser.add_argument("--window", type=float, default=12.0,
                        help="seconds of health watched per wave")
    parser.add_argument("--timeout", type=float, default=20.0,
                        help="seconds to wait for each response")
    parser.add_argument("--agreement-margin", type=float, default=0.02)
    parser.add_argument("--fps-margin", type=float, default=0.25)


def rollout_policy(args: argparse.Namespace) -> Policy:
    """The policy those options give."""
    return Policy(canary_share=args.canary, waves=args.waves,
                  response_timeout_s=args.timeout, window_s=args.window,
                  agreement_margin=args.agreement_margin, fps_margin=args.fps_margin)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "inventory":
            return cmd_inventory(args)
        return cmd_apply(args)
    except (OSError, ValueError, ConnectionError, tarfile.TarError) as exc:
        print(f"mlink-fleet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
