"""Runs `mlink-agent` with TensorFlow and Keras made unimportable, then checks that neither
was loaded. The integration tests start the agent through this file."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

FORBIDDEN = ("tensorflow", "keras", "tf_keras")


class RefuseTensorFlow(MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"the agent must not import TensorFlow, but it imported {name!r}")


def main() -> int:
    sys.meta_path.insert(0, RefuseTensorFlow())
    from agent.cli import main as agent_main

    code = agent_main(sys.argv[1:])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    if leaked:
        print(f"TensorFlow modules loaded in the agent: {leaked}", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
