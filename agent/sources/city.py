"""`city`: a procedural, seeded intersection-camera stream (the paper's City Traffic, in spirit).

Several cameras, one frame per second each, over two simulated days (day 0 a weekday, day 1
a weekend). Frame index i is second `i // cameras` of the stream and camera `i % cameras`.
Each frame is a small RGB image (SIZE x SIZE x 3, float32 in [0, 1]): a road with two lanes
(vehicles drive right in the upper lane, left in the lower), two sidewalks with pedestrians,
lighting that follows the sun, headlights at night, rain streaks or fog from a weather process.

Vehicles and pedestrians arrive as Poisson processes whose rates follow the hour (rush hours on
the weekday, a flat afternoon on the weekend), the place (each camera site has its own mix)
and the weather. Counts are therefore correlated through time and place, yet each has its own
randomness: neither is a function of the other. Congestion slows vehicles down.

Every random draw is keyed by (seed, camera, kind, second), so any frame can be rendered on
its own, consecutive frames show the same objects moving, and another seed gives other frames.

Ground truth per frame (what the zoo's models learn):
- persons (regression, 1): pedestrians visible;     vehicles (regression, 1): vehicles visible;
- traffic (single_label, 3): free / busy / jammed, from the site's congestion at that second;
- vehicle_box (localization): the largest visible vehicle's box in [0, 1], empty if none;
- caption (sequence, 3 tokens): time of day, weather, crowd — e.g. "morning rain quiet".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from agent.configbase import Paced
from agent.sources.base import SOURCES, Frame, Source, paced

SIZE = 32
DAY_S = 86_400
DAYS = ("weekday", "weekend")
TRAFFIC = ("free", "busy", "jammed")
TIME_WORDS = ("night", "morning", "afternoon", "evening")
WEATHER_WORDS = ("clear", "rain", "fog")
CROWD_WORDS = ("empty", "quiet", "crowded")
# Token ids: 0 pads/ends a sequence, 1 starts one (decoders), words from 2.
CAPTION_VOCAB = ("<pad>", "<bos>", *TIME_WORDS, *WEATHER_WORDS, *CROWD_WORDS)
CAPTION_LEN = 3

VEHICLE_WINDOW_S = 16  # longest time a vehicle stays in view (speed floor below)
PERSON_WINDOW_S = 34
VEHICLE_PEAK_RATE = 0.5  # arrivals per second at the busiest site's peak
PERSON_PEAK_RATE = 0.25
UPPER_LANE, LOWER_LANE = (12, 15), (16, 19)  # rows [start, end)
UPPER_WALK, LOWER_WALK = (9, 11), (21, 23)

KIND_VEHICLE, KIND_PERSON, KIND_WEATHER, KIND_NOISE = 1, 2, 3, 4


@dataclass(frozen=True)
class Site:
    name: str
    vehicles: float  # scale of the vehicle arrival rate
    people: float  # scale of the pedestrian arrival rate
    capacity: float  # how much traffic the road takes before it jams
    ground: tuple[float, float, float]


SITES = (
    Site("downtown", 0.9, 0.9, 0.75, (0.50, 0.46, 0.42)),
    Site("ring-road", 1.0, 0.15, 0.9, (0.36, 0.46, 0.30)),
    Site("park", 0.3, 1.0, 0.5, (0.24, 0.52, 0.26)),
    Site("suburb", 0.45, 0.35, 0.6, (0.52, 0.46, 0.34)),
)


def _bump(hour: float, mu: float, sigma: float) -> float:
    return math.exp(-0.5 * ((hour - mu) / sigma) ** 2)


def vehicle_shape(hour: float, weekend: bool) -> float:
    if weekend:
        return 0.06 + 0.5 * _bump(hour, 14.0, 3.5)
    return (0.05 + 0.25 * _bump(hour, 13.0, 4.0) + 0.75 * _bump(hour, 8.0, 1.0)
            + 0.65 * _bump(hour, 17.5, 1.2))


def person_shape(hour: float, weekend: bool) -> float:
    if weekend:
        return 0.03 + 0.85 * _bump(hour, 15.0, 3.0)
    return (0.03 + 0.5 * _bump(hour, 8.3, 0.7) + 0.6 * _bump(hour, 12.5, 1.0)
            + 0.75 * _bump(hour, 18.0, 1.5))


def daylight(hour: float) -> float:
    """Sun from 05:30 to 20:30; street lamps keep a floor at night."""
    return 0.18 + 0.82 * max(0.0, math.sin(math.pi * (hour - 5.5) / 15.0)) ** 0.7


def time_word(hour: float) -> int:
    if hour < 6 or hour >= 21:
        return 0
    return 1 if hour < 12 else 2 if hour < 17 else 3


def _rng(seed: int, camera: int, kind: int, second: int) -> np.random.Generator:
    key = [(seed * 64 + camera) * 8 + kind, second]
    return np.random.Generator(np.random.Philox(key=np.asarray(key, dtype=np.uint64)))


class CityGenerator:
    """Random-access frames and ground truth of the city stream for one seed."""

    def __init__(self, seed: int = 0, cameras: int = 4) -> None:
        if not 1 <= cameras <= len(SITES):
            raise ValueError(f"cameras: 1 to {len(SITES)}, got {cameras}")
        self.seed = seed
        self.cameras = cameras

    def __len__(self) -> int:
        return len(DAYS) * DAY_S * self.cameras

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} outside the stream (0..{len(self) - 1})")
        return index // self.cameras, index % self.cameras

    @functools.lru_cache(maxsize=512)  # noqa: B019 - a bounded per-generator cache by design
    def weather(self, second: int) -> int:
        """0 clear, 1 rain, 2 fog, drawn per half hour."""
        block = second // 1800
        u = _rng(self.seed, 0, KIND_WEATHER, block).random()
        return 1 if u < 0.12 else 2 if u < 0.18 else 0

    def rates(self, camera: int, second: int) -> tuple[float, float, float]:
        """(vehicle rate, person rate, congestion) at this site and second."""
        site = SITES[camera]
        hour = (second % DAY_S) / 3600.0
        weekend = second // DAY_S == 1
        weather = self.weather(second)
        v_factor, p_factor = ((1.0, 1.0), (0.85, 0.35), (0.7, 0.8))[weather]
        vehicle = VEHICLE_PEAK_RATE * site.vehicles * vehicle_shape(hour, weekend) * v_factor
        person = PERSON_PEAK_RATE * site.people * person_shape(hour, weekend) * p_factor
        congestion = vehicle / (VEHICLE_PEAK_RATE * site.capacity * 0.75)
        return vehicle, person, congestion

    def traffic(self, camera: int, second: int) -> int:
        congestion = self.rates(camera, second)[2]
        return 0 if congestion < 0.45 else 1 if congestion < 0.9 else 2

    def _vehicles(self, camera: int, second: int) -> list[tuple[float, int, int, tuple]]:
        """Visible vehicles: (x0, length, lane, colour) at integer `second`."""
        out = []
        for arrival in range(second - VEHICLE_WINDOW_S, second + 1):
            if arrival < 0:
                continue
            rate, _, congestion = self.rates(camera, arrival)
            rng = _rng(self.seed, camera, KIND_VEHICLE, arrival)
            for _ in range(rng.poisson(rate)):
                lane = int(rng.integers(2))
                length = int(rng.integers(4, 9))
                colour = tuple(rng.uniform(0.1, 1.0, 3))
                speed = rng.uniform(6.0, 10.0) * max(0.3, 1.0 - 0.6 * min(congestion, 1.2))
                travelled = speed * (second - arrival - rng.random())
                x0 = -length + travelled if lane == 0 else SIZE - travelled
                if x0 < SIZE and x0 + length > 0:
                    out.append((x0, length, lane, colour))
        return out

    def _people(self, camera: int, second: int) -> list[tuple[float, int, tuple]]:
        out = []
        for arrival in range(second - PERSON_WINDOW_S, second + 1):
            if arrival < 0:
                continue
            rate = self.rates(camera, arrival)[1]
            rng = _rng(self.seed, camera, KIND_PERSON, arrival)
            for _ in range(rng.poisson(rate)):
                walk = int(rng.integers(2))
                rightward = bool(rng.integers(2))
                colour = tuple(rng.uniform(0.2, 1.0, 3))
                travelled = rng.uniform(1.0, 2.0) * (second - arrival - rng.random())
                x = -1 + travelled if rightward else SIZE - travelled
                if 0 <= x < SIZE:
                    out.append((x, walk, colour))
        return out

    def frame(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray], float, int]:
        """(image, ground truth, timestamp in seconds from the stream start, camera)."""
        second, camera = self.locate(index)
        site = SITES[camera]
        hour = (second % DAY_S) / 3600.0
        weather = self.weather(second)
        image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
        image[:] = site.ground
        for rows in (UPPER_WALK, LOWER_WALK):
            image[rows[0]:rows[1]] = 0.62
        image[UPPER_LANE[0]:LOWER_LANE[1]] = 0.3
        image[15, ::4] = 0.85
        vehicles = self._vehicles(camera, second)
        people = self._people(camera, second)
        light = daylight(hour)
        boxes, lanes = [], []
        for x0, length, lane, colour in vehicles:
            top = UPPER_LANE[0] if lane == 0 else LOWER_LANE[0]
            height = 4 if length >= 7 else 3
            left, right = max(0, math.floor(x0)), min(SIZE, math.floor(x0 + length))
            if right <= left:
                continue
            image[top:top + height, left:right] = colour
            boxes.append((left, top, right, top + height))
            lanes.append(lane)
        for x, walk, colour in people:
            top = UPPER_WALK[0] if walk == 0 else LOWER_WALK[0]
            image[top:top + 2, int(x)] = colour
        image *= light
        if light < 0.35:  # headlights shine whatever the light
            for (left, top, right, _), lane in zip(boxes, lanes, strict=True):
                front = right - 1 if lane == 0 else left
                image[top + 1, front] = (1.0, 0.95, 0.6)
        noise = _rng(self.seed, camera, KIND_NOISE, second)
        if weather == 1:
            cols = noise.integers(0, SIZE, 14)
            drops = noise.integers(0, SIZE - 3, 14)
            for r, c in zip(drops, cols, strict=True):
                image[r:r + 3, c] += 0.25
        elif weather == 2:
            image = (0.45 * image + 0.55 * 0.7).astype(np.float32, copy=False)
        image += noise.normal(0.0, 0.02, image.shape).astype(np.float32)
        np.clip(image, 0.0, 1.0, out=image)
        return image, self._truth(camera, second, hour, weather, len(people), boxes), \
            float(second), camera

    def _truth(self, camera: int, second: int, hour: float, weather: int, persons: int,
               boxes: list[tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
        box: np.ndarray = np.zeros(4, dtype=np.float32)
        if boxes:
            biggest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            box = np.asarray(biggest, dtype=np.float32) / SIZE
        crowd = 0 if persons == 0 else 1 if persons <= 3 else 2
        caption = [2 + time_word(hour), 2 + len(TIME_WORDS) + weather,
                   2 + len(TIME_WORDS) + len(WEATHER_WORDS) + crowd]
        return {
            "persons": np.asarray([persons], dtype=np.float32),
            "vehicles": np.asarray([len(boxes)], dtype=np.float32),
            "traffic": np.eye(3, dtype=np.float32)[self.traffic(camera, second)],
            "vehicle_box": box,
            "caption": np.asarray(caption, dtype=np.float32),
        }

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                  np.ndarray, np.ndarray]:
        """Frames, ground truth, timestamps and cameras for many indices at once."""
        images, truths, ts, cams = [], [], [], []
        for index in np.asarray(indices).tolist():
            image, truth, stamp, camera = self.frame(int(index))
            images.append(image)
            truths.append(truth)
            ts.append(stamp)
            cams.append(camera)
        truth = {k: np.stack([t[k] for t in truths]) for k in truths[0]}
        return np.stack(images), truth, np.asarray(ts), np.asarray(cams, dtype=np.int64)


def start_index(day: int, hour: float, cameras: int) -> int:
    """The first frame index at this day and hour."""
    return int(day * DAY_S + hour * 3600) * cameras


class CitySourceConfig(Paced):
    """The procedural city stream (agent.sources.city)."""

    type: Literal["city"]
    seed: int = Field(0, ge=0, le=2**31)
    cameras: int = Field(4, ge=1, le=4)
    start_day: int = Field(0, ge=0, le=1, description="0 weekday, 1 weekend")
    start_hour: float = Field(0.0, ge=0.0, lt=24.0)


@SOURCES.register
class CitySource(Source):
    """The city stream from `start_day`/`start_hour`, every camera, one frame per second each."""

    type: ClassVar[str] = "city"
    config_class = CitySourceConfig
    modalities = ("image",)

    def __init__(self, config) -> None:
        super().__init__(config)
        self.generator = CityGenerator(config.seed, config.cameras)

    @property
    def cameras(self) -> tuple[str, ...]:
        prefix = f"{self.config.id}-" if self.config.id else ""
        return tuple(prefix + site.name for site in SITES[: self.config.cameras])

    def _frames(self) -> Iterator[Frame]:
        index = start_index(self.config.start_day, self.config.start_hour, self.config.cameras)
        while True:
            for i in range(index, len(self.generator)):
                image, truth, ts, camera = self.generator.frame(i)
                yield Frame(frame_id=i, ts=ts, modalities={"image": image}, camera=camera,
                            ground_truth=truth)
            if not self.config.loop:
                return
            index = 0

    def frames(self) -> Iterator[Frame]:
        return paced(self._frames(), self.config.fps)
