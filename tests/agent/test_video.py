"""The `video` and `camera` sources on real H.264 made by ffmpeg at test time: frames, stream
time, pacing, clear errors; two cameras through the agent with the city zoo's TFLite models;
and a live RTSP stream from GStreamer's RTSP server (Debian's packages) that is stopped and
started again while the agent reads it."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.config import ConfigError, validate
from agent.output import model_entries
from agent.sources import open_source, open_sources
from agent.sources.decode import LiveReader, VideoError, open_container
from devtools.broker import free_port, port_open
from links_tflite.interpreter import TFLiteRunner
from offline_trainer.zoo import agent_config_text

pytestmark = pytest.mark.video
av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
if shutil.which("ffmpeg") is None:
    pytest.skip("ffmpeg is not installed (scripts/setup.sh installs it)", allow_module_level=True)

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi and GstRtspServer live
RTSP_SERVER = Path(__file__).resolve().parents[1] / "support" / "rtsp_server.py"
MODEL = {"id": "m", "path": "m.tflite", "input": "image"}


def make_clip(path: Path, seconds: int, size: str = "64x48", fps: int = 10) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}:rate={fps}", "-t", str(seconds), "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-g", str(fps), str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=4)


def config(tmp_path: Path, source: dict | None = None, sources: list | None = None):
    data = {"device_id": "t", "bundle": {"path": "b"}, "models": [MODEL]}
    data.update({"source": source} if source is not None else {"sources": sources})
    return validate(data, tmp_path)


def test_file_frames_carry_stream_time_views_and_pacing(clip: Path, tmp_path: Path) -> None:
    source = open_sources(config(tmp_path, {
        "type": "video", "path": str(clip), "size": [32, 32],
        "views": {"small": {"size": [8, 8], "grayscale": True, "scale": 1.0},
                  "signed": {"size": [32, 32], "scale": 2 / 255, "offset": -1.0}}}))
    frames = list(source.frames())
    assert len(frames) == 40  # 4 s at 10 fps, every frame
    assert [f.stream_ts for f in frames] == pytest.approx([i / 10 for i in range(40)])
    assert [f.frame_id for f in frames] == list(range(40))
    image, small = frames[5].modalities["image"], frames[5].modalities["small"]
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.05
    assert small.shape == (8, 8) and small.max() > 1.0  # raw 0..255 grey, scale 1
    np.testing.assert_allclose(frames[5].modalities["signed"], image * 2 - 1, atol=1e-5)
    assert all(abs(f.ts - time.time()) < 60 for f in frames)  # the wall clock
    assert not np.array_equal(frames[0].modalities["image"], frames[20].modalities["image"])

    paced = open_sources(config(tmp_path, {"type": "video", "path": str(clip), "fps": 2.5,
                                           "loop": True, "id": "gate"}))
    taken = list(itertools.islice(paced.frames(), 14))  # 10 per pass, so it looped
    assert [f.stream_ts for f in taken[:10]] == pytest.approx([i * 0.4 for i in range(10)])
    assert taken[10].stream_ts == pytest.approx(0.0)
    assert len({f.frame_id for f in taken}) == 14  # ids go on across loops
    stats = paced.stats()["gate"]
    assert stats["skipped"] >= 3 * stats["decoded"] // 4 - 4 and stats["dropped"] == 0


def test_live_reader_newest_frame_wins_and_reopens(clip: Path) -> None:
    """A stream that comes faster than it is taken: the newest frame wins, the overwritten
    ones are counted, and a stream that ends is opened again (here a file, read as live)."""
    reader = LiveReader("clip", lambda: open_container(str(clip)), 0.0, 1.0, 1.0)
    reader.start()
    counters = reader.counters
    try:
        first = reader.take()
        assert first is not None
        wait_for(lambda: counters.disconnects == 1, 10, "the end of the clip")
        newest = reader.take()  # within the 1 s back-off: nothing newer comes meanwhile
        assert newest is not None and newest[1] == pytest.approx(3.9)  # the clip's last frame
        assert counters.decoded == 40 and counters.dropped >= 30
        wait_for(lambda: counters.reconnects >= 1, 10, "opened again")
    finally:
        reader.stop()
    assert reader.take() is None  # stopped: a waiting loop returns at once


def test_bad_inputs_are_clear_errors(clip: Path, tmp_path: Path, capsys) -> None:
    from agent.cli import main as agent_main

    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        open_sources(config(tmp_path, {"type": "video", "path": str(missing)}))
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(VideoError, match=re.escape(str(text))):
        open_sources(config(tmp_path, {"type": "video", "path": str(text)}))
    url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    with pytest.raises(VideoError, match=re.escape(url)):
        open_sources(config(tmp_path, {"type": "video", "url": url, "open_timeout_s": 2}))
    with pytest.raises(FileNotFoundError, match="/dev/video99: no such camera device"):
        open_sources(config(tmp_path, {"type": "camera", "device": "/dev/video99"}))
    # a failing second camera closes the first, and the error names the failing one
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        open_sources(config(tmp_path, sources=[
            {"type": "video", "path": str(clip), "id": "a"},
            {"type": "video", "path": str(missing), "id": "b"}]))
    # and on the command line: one line naming it, exit status 2
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'device_id = "t"\n[bundle]\npath = "b"\n[source]\ntype = "video"\n'
                           f'url = "{url}"\nopen_timeout_s = 2\n[[models]]\nid = "m"\n'
                           'path = "m.tflite"\ninput = "image"\n'
                           'task = { kind = "regression", dim = 1 }\n')
    assert agent_main(["record", "--config", str(config_file), "--frames", "1", "--out",
                       str(tmp_path / "r.npz")]) == 2
    assert f"mlink-agent: {url}: cannot open" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "sources", "path", "message"), [
    ({"type": "video"}, None, "source.video", "path"),
    ({"type": "video", "path": "a.mp4", "url": "rtsp://h/s"}, None, "source.video", "not both"),
    ({"type": "video", "url": "rtsp://h/s", "loop": True}, None, "source.video", "live"),
    ({"type": "video", "url": "file:///etc/passwd"}, None, "source.video.url", "pattern"),
    ({"type": "video", "path": "a.mp4", "size": [0, 9000]}, None, "source.video.size.0",
     "greater"),
    ({"type": "camera", "device": "video0"}, None, "source.camera.device", "absolute"),
    ({"type": "lines", "path": "x", "max_line_bytes": 1}, None,
     "source.lines.max_line_bytes", "greater"),
    (None, [{"type": "city"}], "", "needs an `id`"),
    (None, [{"type": "city", "id": "a"}, {"type": "digits", "id": "a"}], "", "duplicate"),
    ({"type": "city"}, [{"type": "city", "id": "a"}], "", "not both"),
    (None, [], "", "give one"),
])
def test_source_config_errors_name_their_path(tmp_path: Path, source, sources, path: str,
                                              message: str) -> None:
    data = {"device_id": "t", "bundle": {"path": "b"}, "models": [MODEL]}
    if source is not None:
        data["source"] = source
    if sources is not None:
        data["sources"] = sources
    with pytest.raises(ConfigError) as caught:
        validate(data, tmp_path)
    assert any(p == path and message in m for p, m in caught.value.errors), caught.value.errors


def city_config_text(city_build, sources: str) -> str:
    """The city zoo's agent config with its `[source]` replaced by `sources`."""
    from offline_trainer.workloads import get_workload
    from tests.conftest import CITY_LINKED_MODELS

    recipes = [r for r in get_workload("city").recipes() if r.model_id in CITY_LINKED_MODELS]
    text = agent_config_text("city", recipes)
    text = re.sub(r"\[source\]\n(?:.+\n)+\n", sources + "\n", text)
    return text.replace('policy = "activation"', 'policy = "all"')


@pytest.mark.trainer
def test_two_video_cameras_through_the_agent_with_tflite_models(city_build, clip: Path,
                                                                tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.scheduler import Agent

    other = make_clip(tmp_path / "other.mp4", seconds=2, size="96x72", fps=5)
    sources = "".join(f'[[sources]]\nid = "{name}"\ntype = "video"\npath = "{path}"\n'
                      'size = [32, 32]\n\n' for name, path in (("gate", clip), ("yard", other)))
    path = city_build.root / "agent-video.toml"
    path.write_text(city_config_text(city_build, sources))
    agent = Agent.from_config(load_config(path))
    seen: dict[str, int] = {}
    frames = agent.start()
    persons = TFLiteRunner(city_build.model_file("persons"))
    for frame in frames:
        payloads = model_entries(agent.process(frame))
        assert {p["camera"] for p in payloads} == {("gate", "yard")[frame.camera]}
        executed = {p["model"]: p for p in payloads if p["provenance"] == "executed"}
        assert set(executed) == {"persons", "traffic", "vehicles"}
        np.testing.assert_allclose(executed["persons"]["value"],
                                   persons.run_one(frame.modalities["image"]), rtol=1e-5)
        assert all(p["stream_ts"] == frame.stream_ts for p in payloads)
        seen[str(payloads[0]["camera"])] = seen.get(str(payloads[0]["camera"]), 0) + 1
    agent.close()
    assert seen == {"gate": 40, "yard": 10}  # every frame of both files, then the end
    status = agent.status("stopped")
    assert set(status["sources"]) == {"gate", "yard"}
    assert status["sources"]["yard"]["decoded"] == 10


class RtspServer:
    """GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0) serving a file on loopback."""

    def __init__(self, clip: Path, port: int) -> None:
        self.clip, self.port = clip, port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), str(self.clip),
                                         str(self.port)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while not port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def rtsp_server_available() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = ("import gi; gi.require_version('Gst', '1.0'); "
             "gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in "
             "('qtdemux', 'h264parse', 'rtph264pay'))")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@pytest.mark.trainer
@pytest.mark.skipif(not rtsp_server_available(),
                    reason="GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, "
                           "gstreamer1.0-plugins-good/-bad, python3-gi) is not installed")
def test_rtsp_stream_reconnects_after_the_server_restarts(city_build, tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.scheduler import Agent

    served = make_clip(tmp_path / "live.mp4", seconds=60)
    server = RtspServer(served, free_port())
    server.start()
    try:
        sources = (f'[source]\nid = "door"\ntype = "video"\n'
                   f'url = "rtsp://127.0.0.1:{server.port}/stream"\nsize = [32, 32]\n'
                   "reconnect_s = 0.2\nreconnect_max_s = 1.0\nopen_timeout_s = 3\n")
        path = city_build.root / "agent-rtsp.toml"
        path.write_text(city_config_text(city_build, sources))
        agent = Agent.from_config(load_config(path))
        runner = threading.Thread(target=agent.run, daemon=True)
        runner.start()
        stats = lambda: agent.source.stats()["door"]  # noqa: E731
        wait_for(lambda: agent.counters.frames >= 10, 30, "frames from the live stream")
        server.stop()
        wait_for(lambda: stats()["disconnects"] >= 1, 15, "the drop seen")
        before = agent.counters.frames
        time.sleep(1.0)  # the stream is down: back-off, nothing new
        server.start()
        wait_for(lambda: stats()["reconnects"] >= 1, 20, "a reconnection")
        wait_for(lambda: agent.counters.frames >= before + 10, 20, "frames after it")
        assert stats()["disconnects"] == 1 and stats()["failed_opens"] >= 1
        agent.stop_event.set()
        agent.source.close()
        runner.join(timeout=10)
        assert not runner.is_alive()
        assert agent.counters.frame_errors == 0
        status = agent.status("stopped")["sources"]["door"]
        assert status["decoded"] >= agent.counters.frames
    finally:
        server.stop()


def test_camera_source_opens_a_device_through_v4l2(tmp_path: Path) -> None:
    """With no V4L2 device on the test machine, the device path is a real file: the source
    reaches FFmpeg's v4l2 input, which refuses it with an error naming the device."""
    fake = tmp_path / "video0"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(VideoError, match=re.escape(str(fake))):
        open_source(config(tmp_path, {"type": "camera", "device": str(fake),
                                      "capture_size": [480, 640], "capture_fps": 30,
                                      "open_timeout_s": 2}).source)


def test_readme_two_camera_config_is_valid(tmp_path: Path) -> None:
    """The README's "Your own models on your cameras" config, as printed there."""
    from agent.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Your own models on your cameras"):]
    text = re.search(r"```toml\n(.*?)```", section, re.S)
    assert text is not None
    path = tmp_path / "agent.toml"
    path.write_text(text.group(1))
    loaded = load_config(path)
    assert [s.id for s in loaded.sources] == ["gate", "yard"]
    assert [s.type for s in loaded.sources] == ["video", "camera"]
