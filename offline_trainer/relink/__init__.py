"""Closed-loop relinking (`mlink-train serve`): a trainer worker takes the boxes' upload jobs
through an MQTT v5 shared subscription, collects their window recordings, relinks the group's
links on the recent ones and rolls the new bundle out through the fleet tool's staged rollout
only where it beats the bundle in force on frames it did not train on.

- `jobs`: an upload job (the box's manifest) read and bounded; `JobRefused` says why;
- `link`: the worker's MQTT connections (the shared job subscription, the upload reader);
- `collector`: an upload's chunks gathered, bounded and checked, then cleared on the broker;
- `store`: the workdir (recordings per box, the bundle in force, the relinks made);
- `relinker`: train on the older rows, measure both bundles on the newest, decide;
- `rollout`: the decision carried out with `fleet.rollout` (the `mlink-fleet push` path);
- `worker`: one job from the broker to the result, given those parts.
"""
