//! Fair admission of the front's guest calls, the rules of tars_agent.tenancy.FairAdmission:
//! at most `workers` calls run at once; a model holds at most its cap (given by Python: all workers
//! when alone, all but one when it shares the agent, or the configured per-model figure) and, while
//! several models have work (running, waiting, or asking within ACTIVE_WINDOW), at most its fair
//! share of the CPU-bound concurrency, `min(workers, cores) / active`; each model waits in its own
//! bounded queue, so a full queue refuses (429) that model only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Model {
    running: usize,
    waiting: usize,
    asked: Option<Instant>,
}

#[derive(Default)]
struct State {
    total: usize,
    models: HashMap<String, Model>,
}

pub struct Admission {
    state: Mutex<State>,
    freed: Notify,
    workers: usize,
    cores: usize,
    max_queue: usize,
}

/// What a model may hold: its cap from Python, and whether the fair share applies on top.
#[derive(Clone, Copy)]
pub struct Cap {
    pub base: usize,
    pub share: bool,
}

/// A worker held by one call of `model`; given back when dropped (once the guest has stopped).
pub struct Permit {
    admission: Arc<Admission>,
    model: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.admission.state.lock().unwrap();
        state.total -= 1;
        if let Some(model) = state.models.get_mut(&self.model) {
            model.running -= 1;
        }
        drop(state);
        self.admission.freed.notify_waiters();
    }
}

/// Takes a request out of its model's queue when it leaves it, admitted or not (a client that left).
struct Waiting<'a> {
    admission: &'a Admission,
    model: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(model) = self.admission.state.lock().unwrap().models.get_mut(self.model) {
            model.waiting -= 1;
        }
    }
}

impl Admission {
    pub fn new(workers: usize, max_queue: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            state: Mutex::default(),
            freed: Notify::new(),
            workers: workers.max(1),
            cores,
            max_queue,
        }
    }

    /// Waits for a worker for `model`; None when its queue is full.
    pub async fn acquire(self: &Arc<Self>, model: &str, cap: Cap) -> Option<Permit> {
        {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            let entry = state.models.entry(model.to_string()).or_default();
            entry.asked = Some(now);
            let queued = entry.waiting;
            if queued == 0 && self.can_start(&state, model, cap, now) {
                return Some(self.start(&mut state, model));
            }
            if queued >= self.max_queue {
                return None;
            }
            state.models.get_mut(model).unwrap().waiting += 1;
        }
        let _waiting = Waiting { admission: self, model };
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable(); // registered before the check: a release in between is not lost
            {
                let mut state = self.state.lock().unwrap();
                if self.can_start(&state, model, cap, Instant::now()) {
                    return Some(self.start(&mut state, model));
                }
            }
            freed.await;
        }
    }

    fn start(self: &Arc<Self>, state: &mut State, model: &str) -> Permit {
        state.total += 1;
        state.models.get_mut(model).unwrap().running += 1;
        Permit {
            admission: self.clone(),
            model: model.to_string(),
        }
    }

    fn can_start(&self, state: &State, model: &str, cap: Cap, now: Instant) -> bool {
        let running = state.models.get(model).map_or(0, |m| m.running);
        state.total < self.workers && running < self.cap(state, model, cap, now)
    }

    fn cap(&self, state: &State, model: &str, cap: Cap, now: Instant) -> usize {
        let base = cap.base.clamp(1, self.workers);
        if !cap.share {
            return base;
        }
        let active = state
            .models
            .iter()
            .filter(|(name, m)| {
                name.as_str() == model
                    || m.running > 0
                    || m.waiting > 0
                    || m.asked.is_some_and(|at| now.duration_since(at) < ACTIVE_WINDOW)
            })
            .count()
            .max(1);
        if active <= 1 {
            return base;
        }
        base.min((self.workers.min(self.cores) / active).max(1))
    }

    /// `(running, waiting)` per model: what the front holds now (for tests and logs).
    pub fn snapshot(&self) -> Vec<(String, usize, usize)> {
        let state = self.state.lock().unwrap();
        state
            .models
            .iter()
            .map(|(name, m)| (name.clone(), m.running, m.waiting))
            .collect()
    }
}
