//! The sidecar's certificate agent (istio-agent's role).
