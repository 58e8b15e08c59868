//! What the native front counts for the agent's Prometheus metrics and reported load: answers by
//! (model, route, status) and refused host calls, drained by Python's collector every fraction of a
//! second (counters, request rates, concurrency), and histograms kept since start, which Python's
//! metrics collector adds to its own series at each scrape.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::front::Kind;

/// Observations by bucket: one per bound, plus +Inf; not cumulative.
#[derive(Clone)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: f64,
}

#[derive(Clone, Copy, Default)]
pub struct Tally {
    pub count: u64,
    pub seconds: f64,
}

pub type Answer = (String, Kind, u16);

pub struct Refused {
    pub count: u64,
    pub seconds: f64,
    pub known: bool, // the agent has a capability of that name
}

#[derive(Default)]
struct Counts {
    answers: HashMap<Answer, Tally>,
    answer_latency: HashMap<Answer, Histogram>,
    // (model, capability name as the guest gave it, cut to 200 chars) -> calls.
    refused: HashMap<(String, String), Refused>,
    // By capability label: the name, or "<unknown>" (guests choose names: bounded label values).
    host_latency: HashMap<String, Histogram>,
}

pub struct Figures {
    bounds: Vec<f64>,
    counts: Mutex<Counts>,
}

fn observe<K: std::hash::Hash + Eq>(histograms: &mut HashMap<K, Histogram>, key: K, bounds: &[f64], seconds: f64) {
    let histogram = histograms.entry(key).or_insert_with(|| Histogram {
        buckets: vec![0; bounds.len() + 1],
        sum: 0.0,
    });
    let bucket = bounds
        .iter()
        .position(|bound| seconds <= *bound)
        .unwrap_or(bounds.len());
    histogram.buckets[bucket] += 1;
    histogram.sum += seconds;
}

impl Figures {
    pub fn new(bounds: Vec<f64>) -> Self {
        Self {
            bounds,
            counts: Mutex::default(),
        }
    }

    pub fn answered(&self, answer: Answer, seconds: f64) {
        let mut counts = self.counts.lock().unwrap();
        let tally = counts.answers.entry(answer.clone()).or_default();
        tally.count += 1;
        tally.seconds += seconds;
        observe(&mut counts.answer_latency, answer, &self.bounds, seconds);
    }

    pub fn refused(&self, model: &str, name: &str, known: bool, seconds: f64) {
        let mut counts = self.counts.lock().unwrap();
        let key = (model.to_string(), name.chars().take(200).collect());
        let refused = counts.refused.entry(key).or_insert(Refused {
            count: 0,
            seconds: 0.0,
            known,
        });
        refused.count += 1;
        refused.seconds += seconds;
        let label = if known { name } else { "<unknown>" };
        observe(&mut counts.host_latency, label.to_string(), &self.bounds, seconds);
    }

    /// Answers and refused host calls since the last drain.
    #[allow(clippy::type_complexity)]
    pub fn drain(&self) -> (HashMap<Answer, Tally>, HashMap<(String, String), Refused>) {
        let mut counts = self.counts.lock().unwrap();
        (std::mem::take(&mut counts.answers), std::mem::take(&mut counts.refused))
    }

    /// The histograms since start: answers' durations, host calls' durations.
    pub fn histograms(&self) -> (HashMap<Answer, Histogram>, HashMap<String, Histogram>) {
        let counts = self.counts.lock().unwrap();
        (counts.answer_latency.clone(), counts.host_latency.clone())
    }
}
