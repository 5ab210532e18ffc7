//! Test-only helpers shared by the capability test suites.

use std::sync::{Arc, Mutex};

/// One recorded `metrics` sample: name, labels in order, value (counter increment or
/// histogram sample).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
    pub(crate) histogram: bool,
}

impl Sample {
    /// `name{k=v,…} +N` for a counter increment.
    pub(crate) fn counter_line(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        // Counter increments are whole numbers; the cast only drops the `.0`.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = self.value as u64;
        format!("{}{{{}}} +{value}", self.name, labels.join(","))
    }

    fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// A `metrics` recorder that keeps every counter increment and histogram sample, for
/// `metrics::with_local_recorder`. Gauges are ignored.
#[derive(Debug, Default, Clone)]
pub(crate) struct TestRecorder(Arc<Mutex<Vec<Sample>>>);

impl TestRecorder {
    /// Every sample so far, in order.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.0.lock().unwrap().clone()
    }

    /// Counter increments as `name{k=v,…} +N` lines, in order.
    pub(crate) fn counter_lines(&self) -> Vec<String> {
        self.samples()
            .iter()
            .filter(|s| !s.histogram)
            .map(Sample::counter_line)
            .collect()
    }

    /// The sum of the increments of counter `name` whose labels include `labels`.
    pub(crate) fn counter_total(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let total = self
            .samples()
            .iter()
            .filter(|s| !s.histogram && s.name == name && s.has_labels(labels))
            .map(|s| s.value)
            .sum::<f64>() as u64;
        total
    }

    /// Histogram samples.
    pub(crate) fn histograms(&self) -> Vec<Sample> {
        self.samples().into_iter().filter(|s| s.histogram).collect()
    }

    fn handle(&self, key: &metrics::Key, histogram: bool) -> Arc<Handle> {
        Arc::new(Handle {
            samples: Arc::clone(&self.0),
            name: key.name().to_owned(),
            labels: key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect(),
            histogram,
        })
    }
}

struct Handle {
    samples: Arc<Mutex<Vec<Sample>>>,
    name: String,
    labels: Vec<(String, String)>,
    histogram: bool,
}

impl Handle {
    fn push(&self, value: f64) {
        self.samples.lock().unwrap().push(Sample {
            name: self.name.clone(),
            labels: self.labels.clone(),
            value,
            histogram: self.histogram,
        });
    }
}

impl metrics::CounterFn for Handle {
    #[allow(clippy::cast_precision_loss)]
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, _: u64) {}
}

impl metrics::HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.handle(key, false))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.handle(key, true))
    }
}
