"""The README's service install, run as written: `scripts/install-service.sh` into a prefix,
then the installed unit's ExecStart run as a user that is not root (as DynamicUser= would),
with the unit's paths and a state dir of its own: the agent reads the copied bundle and
publishes. systemd itself does not run here, so the unit's sandboxing is checked offline
(tests/e2e/test_systemd.py), not enforced."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.broker import LocalBroker
from tests.support.agent_process import Client, wait_until

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534

pytestmark = [pytest.mark.broker, pytest.mark.trainer]


@pytest.fixture()
def world_readable_tmp() -> Iterator[Path]:
    """pytest's tmp_path is 0700 root: a service user could not even reach it."""
    base = Path(tempfile.mkdtemp(prefix="mlink-install-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def exec_start(unit: Path) -> list[str]:
    match = re.search(r"^ExecStart=(.+)$", unit.read_text(), re.MULTILINE)
    assert match, unit
    return shlex.split(match.group(1))


def test_installed_service_runs_as_an_unprivileged_user(digits_build,
                                                        world_readable_tmp: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run the agent as another user")
    base = world_readable_tmp
    prefix, etc, unit_dir = base / "opt", base / "etc", base / "units"
    install = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-service.sh"), "--prefix", str(prefix),
         "--etc", str(etc), "--unit-dir", str(unit_dir), "--from", str(digits_build.root),
         "--no-start"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    assert "ok" in install.stdout  # validate-config on the installed config
    unit = unit_dir / "mlink-agent.service"
    command = exec_start(unit)
    assert command[0] == str(prefix / ".venv" / "bin" / "mlink-agent")
    assert command[-1] == str(etc / "agent.toml")
    assert (etc / "bundle").stat().st_mode & 0o755 == 0o755  # the copy stays readable

    state = base / "state"  # StateDirectory=mlink, StateDirectoryMode=0700, owned by the user
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    with LocalBroker() as broker:
        config = etc / "agent.toml"  # "then edit it": the broker of this test
        config.write_text(config.read_text().replace("port = 1883", f"port = {broker.port}"))
        client = Client(broker.port, device="box-1")
        env = {"PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(state),
               "PYTHONUNBUFFERED": "1", "HOME": "/nonexistent"}
        agent = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: "online" in client.texts_on("availability") or agent.poll(),
                       120, "availability online")
            assert agent.poll() is None, agent.communicate()[0][-3000:]
            outputs = wait_until(lambda: [t for t, _, _ in client.messages
                                          if "/frames/" in t], 120, "outputs")
            assert outputs
        finally:
            agent.send_signal(signal.SIGTERM)
            log = agent.communicate(timeout=60)[0]
            client.client.disconnect()
    assert agent.returncode == 0, log[-3000:]
    assert "stopped" in client.texts_on("availability")
    written = list(state.iterdir())
    assert written and all(p.stat().st_uid == NOBODY for p in written), written
