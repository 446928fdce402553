"""The evaluation (`mlink-train evaluate`): the paper's tables on a workload, measured in one
run, side by side with the baselines.

- `fractions`: link agreement vs the share of the recording trained on;
- `filtering`: the Reducto-like frame filter and its threshold calibration;
- `stream`: the agent config and the stream frames an evaluation runs on;
- `methods`: Standalone (alone, + prior), MLink (both rules), filtering, MLink + filtering,
  the planner, all — each run under a budget and scored, and the ceiling;
- `actions`: every action's agreement (reuse by age, each source subset's ensemble, the
  prior) measured on consecutive frames of the stream;
- `plans`: the planner as the service runs it: the agent's loop with the `plan` policy;
- `rss_probe`: the agent's memory in a fresh process, with or without TensorFlow;
- `run`: the whole evaluation, reusing what is up to date; `report`: the results file.
"""
