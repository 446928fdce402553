"""The evaluation (`mlink-train evaluate`): the paper's tables on a workload, measured in one
run, side by side with the baselines.

- `fractions`: link agreement vs the share of the recording trained on;
- `filtering`: the Reducto-like frame filter and its threshold calibration;
- `stream`: the agent config and the stream frames an evaluation runs on;
- `methods`: Standalone, MLink (both rules), filtering, MLink + filtering, all — each run
  through the real agent under a budget and scored;
- `rss_probe`: the agent's memory in a fresh process, with or without TensorFlow;
- `run`: the whole evaluation, reusing what is up to date; `report`: the results file.
"""
