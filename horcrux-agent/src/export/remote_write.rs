//! Prometheus remote_write 1.0: the catalog's samples as a protobuf
//! `WriteRequest` (the series and labels `/metrics` serves, plus the target's
//! external labels), snappy block-compressed, POSTed with the protocol's headers.
//! Series that disappear get a staleness marker, as Prometheus's own scrapes do.

use std::collections::{HashMap, HashSet};

use prost::Message;

use crate::catalog::{self, Kind, Scope, Unit, Value, Visitor};

/// `prometheus.WriteRequest` (remote.proto); field 2 is reserved there.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, Hash, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Prometheus's staleness marker: a NaN with this exact bit pattern.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Builds one `WriteRequest` per sampling tick and remembers which series each
/// scope carried, so that the next sampling of that scope marks the vanished ones
/// stale (a scope whose snapshot has not changed is not sampled, and keeps its
/// series).
pub struct SeriesBuilder {
    external_labels: Vec<Label>,
    /// Each scope's label sets at its last sampling, in order.
    previous: HashMap<Scope, Vec<Vec<Label>>>,
    /// The series of this tick, and from which index each visited scope's start.
    current: Vec<TimeSeries>,
    visited: Vec<(Scope, usize)>,
    timestamp_ms: i64,
}

impl SeriesBuilder {
    pub fn new(external_labels: &[(String, String)]) -> Self {
        Self {
            external_labels: external_labels
                .iter()
                .map(|(name, value)| Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            previous: HashMap::new(),
            current: Vec::new(),
            visited: Vec::new(),
            timestamp_ms: 0,
        }
    }

    /// The timestamp of the samples visited from now on.
    pub fn stamp(&mut self, timestamp_ms: i64) {
        self.timestamp_ms = timestamp_ms;
    }

    /// The samples visited from now on are `scope`'s.
    pub fn scope(&mut self, scope: Scope) {
        self.visited.push((scope, self.current.len()));
    }

    /// Ends the tick: the request, with a stale marker for every series a visited
    /// scope no longer has, and its sample count.
    pub fn finish(&mut self) -> (Vec<u8>, u64) {
        let timeseries = std::mem::take(&mut self.current);
        let visited = std::mem::take(&mut self.visited);
        let current = timeseries.len();
        // Each visited scope's series, as index ranges into `timeseries`.
        let ranges: Vec<(Scope, std::ops::Range<usize>)> = visited
            .iter()
            .enumerate()
            .map(|(index, (scope, start))| {
                let end = visited.get(index + 1).map_or(current, |next| next.1);
                (*scope, *start..end)
            })
            .collect();
        let mut stale = Vec::new();
        for (scope, range) in &ranges {
            let before = self.previous.remove(scope).unwrap_or_default();
            let now = &timeseries[range.clone()];
            // Usually every series is still there, in the same order: no hashing.
            let unchanged = before.len() == now.len()
                && before.iter().zip(now).all(|(old, new)| *old == new.labels);
            if unchanged {
                continue;
            }
            let now: HashSet<&[Label]> =
                now.iter().map(|series| series.labels.as_slice()).collect();
            stale.extend(
                before
                    .into_iter()
                    .filter(|labels| !now.contains(labels.as_slice()))
                    .map(|labels| TimeSeries {
                        labels,
                        samples: vec![Sample {
                            value: f64::from_bits(STALE_NAN),
                            timestamp: self.timestamp_ms,
                        }],
                    }),
            );
        }
        let mut request = WriteRequest { timeseries };
        request.timeseries.extend(stale);
        let samples = request.timeseries.len() as u64;
        let body = compress(&request);
        // The label sets are kept for the next sampling's stale markers, moved
        // rather than copied (the request is encoded already).
        let mut series = request.timeseries.into_iter().map(|series| series.labels);
        for (scope, range) in ranges {
            self.previous
                .insert(scope, series.by_ref().take(range.len()).collect());
        }
        (body, samples)
    }

    fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut set: Vec<Label> = Vec::with_capacity(labels.len() + 1 + self.external_labels.len());
        set.push(Label {
            name: "__name__".into(),
            value: name.into(),
        });
        set.extend(labels.iter().map(|(name, value)| Label {
            name: (*name).into(),
            value: (*value).into(),
        }));
        // External labels never override a sample's own (Prometheus's rule).
        for external in &self.external_labels {
            if !labels.iter().any(|(name, _)| *name == external.name) {
                set.push(external.clone());
            }
        }
        // The protocol requires label names in lexicographic order.
        set.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        self.current.push(TimeSeries {
            labels: set,
            samples: vec![Sample {
                value,
                timestamp: self.timestamp_ms,
            }],
        });
    }
}

impl Visitor for SeriesBuilder {
    fn family(&mut self, _name: &str, _help: &'static str, _kind: Kind, _unit: Unit) {}

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value<'_>) {
        catalog::prometheus_samples(name, labels, value, &mut |name, labels, value| {
            if let Some(value) = value.as_f64() {
                self.push(name, labels, value);
            }
        });
    }
}

/// Encodes and snappy-compresses a request body.
pub fn compress(request: &WriteRequest) -> Vec<u8> {
    let encoded = request.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&encoded)
        .unwrap_or_default()
}

/// One request body from several queued records: protobuf repeated fields
/// concatenate, so the decompressed records joined are one `WriteRequest` with
/// every series in queue order. Records that do not decompress are skipped (the
/// queue's checksums make that a software fault, not disk damage).
pub fn join(records: &[Vec<u8>]) -> Vec<u8> {
    if let [only] = records {
        return only.clone();
    }
    let mut joined = Vec::new();
    let mut decoder = snap::raw::Decoder::new();
    for record in records {
        match decoder.decompress_vec(record) {
            Ok(bytes) => joined.extend_from_slice(&bytes),
            Err(error) => tracing::warn!("queued record does not decompress: {error}"),
        }
    }
    snap::raw::Encoder::new()
        .compress_vec(&joined)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sorted_external_ones_added_and_vanished_series_marked_stale() {
        let mut builder = SeriesBuilder::new(&[
            ("instance".into(), "node-1".into()),
            ("id".into(), "ignored".into()),
        ]);
        builder.stamp(1000);
        builder.scope(Scope::Container);
        builder.push("up", &[("id", "a"), ("Zone", "z")], 1.0);
        builder.push("up", &[("id", "b")], 2.0);
        builder.scope(Scope::Node);
        builder.push("load", &[], 0.5);
        let (first, samples) = builder.finish();
        let first = decode(&first);
        assert_eq!(samples, 3);
        let names: Vec<&str> = first.timeseries[0]
            .labels
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["Zone", "__name__", "id", "instance"]);
        assert_eq!(first.timeseries[0].labels[2].value, "a");
        // The node is not sampled this tick: its series are not stale.
        builder.stamp(2000);
        builder.scope(Scope::Container);
        builder.push("up", &[("id", "b")], 3.0);
        let (second, samples) = builder.finish();
        let second = decode(&second);
        assert_eq!(samples, 2);
        let stale = &second.timeseries[1];
        assert_eq!(stale.labels, first.timeseries[0].labels);
        assert_eq!(stale.samples[0].value.to_bits(), STALE_NAN);
        assert_eq!(stale.samples[0].timestamp, 2000);
    }

    fn decode(body: &[u8]) -> WriteRequest {
        let bytes = snap::raw::Decoder::new()
            .decompress_vec(body)
            .expect("snappy");
        WriteRequest::decode(bytes.as_slice()).expect("protobuf")
    }

    #[test]
    fn joined_records_decode_as_one_request() {
        let request = |value: f64| WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "__name__".into(),
                    value: "x".into(),
                }],
                samples: vec![Sample {
                    value,
                    timestamp: value as i64,
                }],
            }],
        };
        let joined = decode(&join(&[compress(&request(1.0)), compress(&request(2.0))]));
        assert_eq!(joined.timeseries.len(), 2);
        assert_eq!(joined.timeseries[1].samples[0].value, 2.0);
    }
}
