"""Shared fixtures. The digits build (zoo, recording, stream, bundle) is made once per
session with short training, through the real TensorFlow -> TFLite -> LiteRT path."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Markers, applied truthfully: a test that uses a TensorFlow-built fixture is `trainer`, one
# that uses a broker fixture is `broker`; tests that start Mosquitto or import TensorFlow
# themselves carry the marker in their module. `_markers_are_truthful` fails a test that
# starts a broker or first imports TensorFlow without its marker (exact under
# `-m "not trainer"`, where nothing else imports TensorFlow first).
TRAINER_FIXTURES = frozenset({"digits_build", "city_zoo", "city_build"})
BROKER_FIXTURES = frozenset({"persistent_broker", "broker"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & TRAINER_FIXTURES:
            item.add_marker(pytest.mark.trainer)
        if used & BROKER_FIXTURES:
            item.add_marker(pytest.mark.broker)


@pytest.fixture(autouse=True)
def _markers_are_truthful(request: pytest.FixtureRequest) -> Iterator[None]:
    from devtools.broker import LocalBroker

    had_tensorflow = "tensorflow" in sys.modules
    starts = LocalBroker.starts
    yield
    node = request.node
    if LocalBroker.starts > starts and node.get_closest_marker("broker") is None:
        pytest.fail(f"{node.nodeid} starts Mosquitto: mark it `broker`", pytrace=False)
    if (not had_tensorflow and "tensorflow" in sys.modules
            and node.get_closest_marker("trainer") is None):
        pytest.fail(f"{node.nodeid} imports TensorFlow: mark it `trainer`", pytrace=False)


# The models the shared bundle links: one per vector task kind that the skeleton's links
# cover, small enough to train in seconds. The zoo itself builds every digits model.
LINKED_MODELS = ("digit", "parity", "inkbox")


@dataclass(frozen=True)
class DigitsBuild:
    root: Path
    links: list  # offline_trainer.train_links.LinkResult

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def stream(self) -> Path:
        return self.root / "stream.npz"

    @property
    def recording(self) -> Path:
        return self.root / "recording-linked.npz"

    def recipes(self) -> list:
        from offline_trainer.workloads import get_workload

        return [r for r in get_workload("digits").recipes() if r.model_id in LINKED_MODELS]

    def model_file(self, model_id: str) -> Path:
        return self.root / "models" / f"{model_id}.tflite"


FIXTURE = Path(__file__).resolve().parent / "data" / "digits3"


@pytest.fixture(scope="session")
def digits_fixture() -> DigitsBuild:
    """The committed three-model digits build (`LINKED_MODELS`: their .tflite files, the
    bundle of their six links, 60 stream frames; made by devtools/fixture_bundle.py): what the
    scheduler's tests run on without TensorFlow. Read-only: write configs under tmp_path."""
    return DigitsBuild(root=FIXTURE, links=[])


@pytest.fixture()
def persistent_broker(tmp_path: Path):
    """A Mosquitto that keeps persistent sessions and their queues across its own restarts,
    without a cap on queued messages (Mosquitto's default silently drops beyond 1000), so a
    subscriber with a persistent session counts everything a publisher delivered."""
    from devtools.broker import LocalBroker

    store = tmp_path / "mosquitto-db"
    store.mkdir()
    extra = f"persistence true\npersistence_location {store}/\nmax_queued_messages 0\n"
    with LocalBroker(extra_config=extra) as broker:
        yield broker


@pytest.fixture(scope="session")
def digits_build(tmp_path_factory: pytest.TempPathFactory) -> DigitsBuild:
    from offline_trainer.links import LinkTraining
    from offline_trainer.train_links import train_bundle
    from offline_trainer.zoo import build_zoo

    root = tmp_path_factory.mktemp("digits")
    build_zoo("digits", root, seed=0)
    linked_recording(root / "recording.npz", root / "recording-linked.npz", LINKED_MODELS)
    # every link ships (keep_all), those not better than their target's prior included (the
    # links into inkbox): the agent's tests need links into every target
    links = train_bundle(root / "recording-linked.npz", root / "bundle", 0.7,
                         LinkTraining(epochs=60), keep_all=True)
    return DigitsBuild(root=root, links=links)


# The city models the shared city bundle links: the three vector models whose links the
# profiling window scores (sequence targets are not scored online).
CITY_LINKED_MODELS = ("persons", "traffic", "vehicles")
CITY_SIZES = (3000, 1000, 40)  # zoo, recording, stream frames: a reduced city sample


@dataclass(frozen=True)
class CityBuild:
    root: Path

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    def model_file(self, model_id: str) -> Path:
        return self.root / "models" / f"{model_id}.tflite"


def linked_recording(source: Path, out: Path, models: tuple[str, ...]) -> Path:
    """A recording of only `models` (what the links of a test bundle are trained on)."""
    from links_tflite.recording import Recording

    Recording.load(source).select_models(models).save(out)
    return out


@pytest.fixture(scope="session")
def city_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The city zoo, trained on a reduced sample so that the suite stays short."""
    from offline_trainer.workloads.city import CityWorkload
    from offline_trainer.zoo import build_zoo

    root = tmp_path_factory.mktemp("city")
    build_zoo("city", root, seed=0, workload=CityWorkload(*CITY_SIZES))
    return root


@pytest.fixture(scope="session")
def city_build(city_zoo: Path) -> CityBuild:
    """The city zoo with a bundle linking its vector models, trained with short epochs."""
    from offline_trainer.links import LinkTraining
    from offline_trainer.train_links import train_bundle

    recording = linked_recording(city_zoo / "recording.npz",
                                 city_zoo / "recording-linked.npz", CITY_LINKED_MODELS)
    train_bundle(recording, city_zoo / "bundle", 0.7, LinkTraining(epochs=40), keep_all=True)
    return CityBuild(root=city_zoo)
