//! OTLP/HTTP metrics (protobuf, `opentelemetry.proto.collector.metrics.v1`): the
//! catalog's families as OTLP metrics under one resource (`service.name =
//! "horcrux"`, `host.name`, the target's `resource_attributes`). Counters are
//! cumulative monotonic sums, gauges gauges, and the eBPF latency histograms
//! explicit-bucket histograms (bounds in seconds), cumulative. Names, units'
//! meaning and labels (as attributes) are those of `/metrics`.

use prost::Message;

use crate::catalog::{Kind, Unit, Value, Visitor};

#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeMetrics {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(string, tag = "1")]
    pub string_value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Metric {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub description: String,
    #[prost(string, tag = "3")]
    pub unit: String,
    #[prost(oneof = "Data", tags = "5, 7, 9")]
    pub data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
}

#[derive(Clone, PartialEq, Message)]
pub struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<NumberDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
    #[prost(bool, tag = "3")]
    pub is_monotonic: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Histogram {
    #[prost(message, repeated, tag = "1")]
    pub data_points: Vec<HistogramDataPoint>,
    #[prost(int32, tag = "2")]
    pub aggregation_temporality: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(oneof = "Number", tags = "4, 6")]
    pub value: Option<Number>,
}

#[derive(Clone, Copy, PartialEq, prost::Oneof)]
pub enum Number {
    #[prost(double, tag = "4")]
    AsDouble(f64),
    #[prost(sfixed64, tag = "6")]
    AsInt(i64),
}

#[derive(Clone, PartialEq, Message)]
pub struct HistogramDataPoint {
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "2")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "4")]
    pub count: u64,
    #[prost(double, optional, tag = "5")]
    pub sum: Option<f64>,
    #[prost(fixed64, repeated, tag = "6")]
    pub bucket_counts: Vec<u64>,
    #[prost(double, repeated, tag = "7")]
    pub explicit_bounds: Vec<f64>,
}

/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: i32 = 2;

/// UCUM units, as OTLP wants them.
fn ucum(unit: Unit) -> &'static str {
    match unit {
        Unit::Seconds | Unit::Timestamp => "s",
        Unit::Bytes => "By",
        Unit::BytesPerSecond => "By/s",
        Unit::Percent => "%",
        Unit::Ratio | Unit::Info => "1",
        Unit::Count => "{count}",
        Unit::Cores => "{cpu}",
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            string_value: value.to_owned(),
        }),
    }
}

/// Builds one request per published snapshot.
pub struct MetricsBuilder {
    resource: Resource,
    /// Cumulative sums and histograms start here (Unix ns): the agent's start,
    /// the earliest instant it vouches for.
    start_ns: u64,
    time_ns: u64,
    metrics: Vec<Metric>,
    points: u64,
}

impl MetricsBuilder {
    pub fn new(host_name: &str, attributes: &[(String, String)], start_unix: u64) -> Self {
        let mut resource = vec![
            attribute("service.name", "horcrux"),
            attribute("service.version", env!("CARGO_PKG_VERSION")),
            attribute("host.name", host_name),
        ];
        for (key, value) in attributes {
            resource.retain(|kv| &kv.key != key);
            resource.push(attribute(key, value));
        }
        Self {
            resource: Resource {
                attributes: resource,
            },
            start_ns: start_unix.saturating_mul(1_000_000_000),
            time_ns: 0,
            metrics: Vec::new(),
            points: 0,
        }
    }

    /// The time of the points visited from now on.
    pub fn stamp(&mut self, timestamp_ms: i64) {
        self.time_ns = (timestamp_ms.max(0) as u64).saturating_mul(1_000_000);
    }

    /// Ends the snapshot: the request (families without points left out) and its
    /// point count.
    pub fn finish(&mut self) -> (ExportMetricsServiceRequest, u64) {
        let metrics: Vec<Metric> = std::mem::take(&mut self.metrics)
            .into_iter()
            .filter(|metric| match &metric.data {
                Some(Data::Gauge(gauge)) => !gauge.data_points.is_empty(),
                Some(Data::Sum(sum)) => !sum.data_points.is_empty(),
                Some(Data::Histogram(histogram)) => !histogram.data_points.is_empty(),
                None => false,
            })
            .collect();
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "horcrux".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    metrics,
                }],
            }],
        };
        (request, std::mem::take(&mut self.points))
    }
}

impl Visitor for MetricsBuilder {
    fn family(&mut self, name: &str, help: &'static str, kind: Kind, unit: Unit) {
        let data = match kind {
            Kind::Gauge => Data::Gauge(Gauge::default()),
            Kind::Counter => Data::Sum(Sum {
                data_points: Vec::new(),
                aggregation_temporality: CUMULATIVE,
                is_monotonic: true,
            }),
            Kind::Histogram => Data::Histogram(Histogram {
                data_points: Vec::new(),
                aggregation_temporality: CUMULATIVE,
            }),
        };
        self.metrics.push(Metric {
            name: name.to_owned(),
            description: help.to_owned(),
            unit: ucum(unit).to_owned(),
            data: Some(data),
        });
    }

    fn sample(&mut self, _name: &str, labels: &[(&str, &str)], value: Value<'_>) {
        let attributes: Vec<KeyValue> = labels
            .iter()
            .map(|(key, value)| attribute(key, value))
            .collect();
        let (start, time) = (self.start_ns, self.time_ns);
        let number = |value: Value<'_>| match value {
            Value::Integer(value) => i64::try_from(value).ok().map(Number::AsInt),
            Value::Float(value) => Some(Number::AsDouble(value)),
            Value::Histogram(_) => None,
        };
        let Some(data) = self.metrics.last_mut().and_then(|m| m.data.as_mut()) else {
            return;
        };
        match (data, value) {
            (Data::Gauge(Gauge { data_points }), value)
            | (Data::Sum(Sum { data_points, .. }), value) => {
                let Some(value) = number(value) else {
                    return;
                };
                data_points.push(NumberDataPoint {
                    attributes,
                    // Sums count from the agent's start (gauges ignore it).
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    value: Some(value),
                });
            }
            (Data::Histogram(histogram), Value::Histogram(model)) => {
                // The model's buckets are cumulative with bounds in µs; OTLP's are
                // per bucket, the last one above every bound.
                let mut below = 0;
                let mut bucket_counts = Vec::with_capacity(model.buckets.len() + 1);
                for bucket in &model.buckets {
                    bucket_counts.push(bucket.count.saturating_sub(below));
                    below = below.max(bucket.count);
                }
                bucket_counts.push(model.count.saturating_sub(below));
                histogram.data_points.push(HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count: model.count,
                    sum: Some(model.sum / 1e6),
                    bucket_counts,
                    explicit_bounds: model.buckets.iter().map(|b| b.le as f64 / 1e6).collect(),
                });
            }
            (Data::Histogram(_), _) => return,
        }
        self.points += 1;
    }
}

/// Encodes and snappy-compresses a request for the queue (OTLP/HTTP bodies are
/// sent uncompressed: [`join`]).
pub fn compress(request: &ExportMetricsServiceRequest) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap_or_default()
}

/// One request body from several queued records: the decompressed records
/// concatenated are one `ExportMetricsServiceRequest` with all their
/// `ResourceMetrics`, in queue order.
pub fn join(records: &[Vec<u8>]) -> Vec<u8> {
    let mut decoder = snap::raw::Decoder::new();
    let mut joined = Vec::new();
    for record in records {
        match decoder.decompress_vec(record) {
            Ok(bytes) => joined.extend_from_slice(&bytes),
            Err(error) => tracing::warn!("queued record does not decompress: {error}"),
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Histogram as ModelHistogram, HistogramBucket};

    #[test]
    fn families_become_metrics_with_cumulative_sums_and_per_bucket_histograms() {
        let mut builder = MetricsBuilder::new("node-1", &[("env".into(), "test".into())], 100);
        builder.stamp(5_000);
        builder.family("horcrux_x_total", "X.", Kind::Counter, Unit::Count);
        builder.sample("horcrux_x_total", &[("cpu", "0")], Value::Integer(7));
        builder.family("horcrux_empty", "Nothing.", Kind::Gauge, Unit::Bytes);
        builder.family(
            "horcrux_lat_seconds",
            "Latency.",
            Kind::Histogram,
            Unit::Seconds,
        );
        let model = ModelHistogram {
            unit: "us",
            buckets: vec![
                HistogramBucket { le: 10, count: 2 },
                HistogramBucket { le: 100, count: 5 },
            ],
            count: 6,
            sum: 400.0,
        };
        builder.sample("horcrux_lat_seconds", &[], Value::Histogram(&model));
        let (request, points) = builder.finish();
        assert_eq!(points, 2);
        let decoded = ExportMetricsServiceRequest::decode(request.encode_to_vec().as_slice())
            .expect("round trip");
        let resource = decoded.resource_metrics[0]
            .resource
            .as_ref()
            .expect("resource");
        assert!(resource.attributes.iter().any(|kv| kv.key == "host.name"));
        assert!(resource.attributes.iter().any(|kv| kv.key == "env"));
        let metrics = &decoded.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2, "the family without points is left out");
        let Some(Data::Sum(sum)) = &metrics[0].data else {
            panic!("a sum: {:?}", metrics[0]);
        };
        assert!(sum.is_monotonic && sum.aggregation_temporality == CUMULATIVE);
        assert_eq!(sum.data_points[0].value, Some(Number::AsInt(7)));
        assert_eq!(sum.data_points[0].time_unix_nano, 5_000_000_000);
        assert_eq!(sum.data_points[0].start_time_unix_nano, 100_000_000_000);
        let Some(Data::Histogram(histogram)) = &metrics[1].data else {
            panic!("a histogram: {:?}", metrics[1]);
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.bucket_counts, [2, 3, 1]);
        assert_eq!(point.explicit_bounds, [1e-5, 1e-4]);
        assert_eq!(point.sum, Some(4e-4));
    }
}
