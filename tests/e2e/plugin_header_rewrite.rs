//! End to end: the shipped `header_rewrite` plugin through a running Weft (and once through Envoy 1.40).
