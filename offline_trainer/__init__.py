"""The workstation side of MLink Edge: workloads, the demo model zoo, link training,
int8 export and bundle writing. Needs the [trainer] extra (TensorFlow)."""
