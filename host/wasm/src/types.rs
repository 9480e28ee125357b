//! The proxy-wasm ABI v0.2.1 enumerations, with the spec's numeric values.

/// A raw ABI value that names no member of its enumeration (a map type 9, a log level 7, …):
/// the host function returns `BadArgument`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} value {value}")]
pub struct UnknownValue {
    /// The enumeration (`MapType`, `BufferType`, …).
    pub kind: &'static str,
    /// The value the guest passed.
    pub value: i32,
}

impl From<UnknownValue> for Status {
    fn from(_: UnknownValue) -> Status {
        Status::BadArgument
    }
}

/// Status codes returned by host functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The item does not exist.
    NotFound = 1,
    /// An argument is invalid.
    BadArgument = 2,
    /// Serialization failed.
    SerializationFailure = 3,
    /// Parsing failed.
    ParseFailure = 4,
    /// A guest pointer is out of bounds.
    InvalidMemoryAccess = 6,
    /// The queue is empty.
    Empty = 7,
    /// Compare-and-swap mismatch.
    CasMismatch = 8,
    /// Something went wrong in the host.
    InternalFailure = 10,
    /// Not supported by this host.
    Unimplemented = 12,
}

impl Status {
    /// The raw value.
    pub fn raw(self) -> i32 {
        self as i32
    }
}

/// A guest-side failure that aborts the host call (turned into a guest status).
impl From<crate::abi::MemoryError> for Status {
    fn from(_: crate::abi::MemoryError) -> Status {
        Status::InvalidMemoryAccess
    }
}

/// What a stream callback asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on.
    Continue,
    /// Stop iteration (buffer, wait for a callout, …).
    Pause,
}

impl Action {
    pub(crate) fn from_raw(v: i32) -> Action {
        if v == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// Buffer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    /// The request body.
    HttpRequestBody,
    /// The response body.
    HttpResponseBody,
    /// Downstream TCP data.
    DownstreamData,
    /// Upstream TCP data.
    UpstreamData,
    /// An HTTP callout's response body.
    HttpCallResponseBody,
    /// A gRPC message (not supported).
    GrpcReceiveBuffer,
    /// The VM configuration.
    VmConfiguration,
    /// The plugin configuration.
    PluginConfiguration,
    /// Foreign function arguments.
    CallData,
}

impl TryFrom<i32> for BufferType {
    type Error = UnknownValue;

    fn try_from(v: i32) -> Result<BufferType, UnknownValue> {
        Ok(match v {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => {
                return Err(UnknownValue {
                    kind: "BufferType",
                    value: v,
                });
            }
        })
    }
}

/// Header map types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// Request headers.
    HttpRequestHeaders,
    /// Request trailers.
    HttpRequestTrailers,
    /// Response headers.
    HttpResponseHeaders,
    /// Response trailers.
    HttpResponseTrailers,
    /// gRPC initial metadata (not supported).
    GrpcReceiveInitialMetadata,
    /// gRPC trailing metadata (not supported).
    GrpcReceiveTrailingMetadata,
    /// An HTTP callout's response headers.
    HttpCallResponseHeaders,
    /// An HTTP callout's response trailers.
    HttpCallResponseTrailers,
}

impl TryFrom<i32> for MapType {
    type Error = UnknownValue;

    fn try_from(v: i32) -> Result<MapType, UnknownValue> {
        Ok(match v {
            0 => MapType::HttpRequestHeaders,
            1 => MapType::HttpRequestTrailers,
            2 => MapType::HttpResponseHeaders,
            3 => MapType::HttpResponseTrailers,
            4 => MapType::GrpcReceiveInitialMetadata,
            5 => MapType::GrpcReceiveTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => {
                return Err(UnknownValue {
                    kind: "MapType",
                    value: v,
                });
            }
        })
    }
}

/// Stream types for `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    /// The HTTP request.
    HttpRequest,
    /// The HTTP response.
    HttpResponse,
    /// The downstream TCP connection.
    Downstream,
    /// The upstream TCP connection.
    Upstream,
}

impl TryFrom<i32> for StreamType {
    type Error = UnknownValue;

    fn try_from(v: i32) -> Result<StreamType, UnknownValue> {
        Ok(match v {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => {
                return Err(UnknownValue {
                    kind: "StreamType",
                    value: v,
                });
            }
        })
    }
}

/// Which side closed a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum PeerType {
    /// Unknown.
    Unknown = 0,
    /// This proxy closed it.
    Local = 1,
    /// The peer closed it.
    Remote = 2,
}

/// Metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    /// Monotonic counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram.
    Histogram,
}

impl TryFrom<i32> for MetricType {
    type Error = UnknownValue;

    fn try_from(v: i32) -> Result<MetricType, UnknownValue> {
        Ok(match v {
            0 => MetricType::Counter,
            1 => MetricType::Gauge,
            2 => MetricType::Histogram,
            _ => {
                return Err(UnknownValue {
                    kind: "MetricType",
                    value: v,
                });
            }
        })
    }
}

/// Log levels, TRACE (0) to CRITICAL (5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// 0.
    Trace = 0,
    /// 1.
    Debug = 1,
    /// 2.
    Info = 2,
    /// 3.
    Warn = 3,
    /// 4.
    Error = 4,
    /// 5.
    Critical = 5,
}

impl TryFrom<i32> for LogLevel {
    type Error = UnknownValue;

    fn try_from(v: i32) -> Result<LogLevel, UnknownValue> {
        Ok(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => {
                return Err(UnknownValue {
                    kind: "LogLevel",
                    value: v,
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_decode_or_name_what_is_wrong() {
        assert_eq!(MapType::try_from(2), Ok(MapType::HttpResponseHeaders));
        assert_eq!(BufferType::try_from(8), Ok(BufferType::CallData));
        assert_eq!(StreamType::try_from(3), Ok(StreamType::Upstream));
        assert_eq!(MetricType::try_from(1), Ok(MetricType::Gauge));
        assert_eq!(LogLevel::try_from(5), Ok(LogLevel::Critical));
        let e = MapType::try_from(8).unwrap_err();
        assert_eq!(e.to_string(), "unknown MapType value 8");
        assert_eq!(Status::from(e), Status::BadArgument);
        assert!(BufferType::try_from(-1).is_err());
        assert!(LogLevel::try_from(6).is_err());
        assert!(MetricType::try_from(3).is_err());
        assert!(StreamType::try_from(4).is_err());
    }
}
