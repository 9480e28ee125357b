//! End to end: the shipped `telemetry` plugin through a running Weft (and once through Envoy 1.40).
