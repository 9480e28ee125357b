//! End to end: the shipped `authz` plugin through a running Weft (and once through Envoy 1.40).
