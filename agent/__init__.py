"""The MLink Edge daemon: measures model costs, selects the activated models under a
budget, runs them and the link ensembles, publishes every model's output over MQTT.
Never imports TensorFlow."""
