//! Fair admission of the front's guest calls, the rules of tars_agent.tenancy.FairAdmission:
//! at most `workers` calls run at once; a model holds at most its cap (given by Python: all workers
//! when alone, all but one when it shares the agent, or the configured per-model figure) and, while
//! several models have work (running, waiting, or asking within ACTIVE_WINDOW), at most its fair
//! share of the CPU-bound concurrency, `min(workers, cores) / active`; each model waits in its own
//! bounded queue, so a full queue refuses (429) that model only.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

struct Model {
    running: usize,
    // First come, first served: a freed worker is handed to the head of a queue, never raced for.
    queue: VecDeque<(u64, oneshot::Sender<Permit>)>,
    cap: Cap, // the latest a request of this model came with
    asked: Option<Instant>,
}

#[derive(Default)]
struct State {
    total: usize,
    models: HashMap<String, Model>,
    // Models with a queue, in round-robin order: a model served goes to the back.
    turns: VecDeque<String>,
    next_waiter: u64,
}

pub struct Admission {
    state: Mutex<State>,
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

/// A worker held by one call of `model`; given back when dropped (once the guest has stopped), to the
/// next waiter in turn. One handed to a waiter that has left is dropped with its channel: given back.
pub struct Permit {
    admission: Arc<Admission>,
    model: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let handed = {
            let mut state = self.admission.state.lock().unwrap();
            state.total -= 1;
            if let Some(model) = state.models.get_mut(&self.model) {
                model.running -= 1;
            }
            self.admission.dispatch(&mut state)
        };
        // Sent outside the lock: a send to a waiter that left drops the permit, which dispatches again.
        for (waiter, permit) in handed {
            let _ = waiter.send(permit);
        }
    }
}

/// Takes a request out of its model's queue when it leaves before its turn (a client that left).
struct Waiting<'a> {
    admission: &'a Admission,
    model: &'a str,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.admission.state.lock().unwrap();
        if let Some(model) = state.models.get_mut(self.model) {
            model.queue.retain(|(id, _)| *id != self.id);
            if model.queue.is_empty() {
                state.turns.retain(|name| name != self.model);
            }
        }
    }
}

impl Admission {
    pub fn new(workers: usize, max_queue: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            state: Mutex::default(),
            workers: workers.max(1),
            cores,
            max_queue,
        }
    }

    /// Waits for a worker for `model`; None when its queue is full.
    pub async fn acquire(self: &Arc<Self>, model: &str, cap: Cap) -> Option<Permit> {
        let (id, turn) = {
            let mut state = self.state.lock().unwrap();
            let now = Instant::now();
            let entry = state.models.entry(model.to_string()).or_insert_with(|| Model {
                running: 0,
                queue: VecDeque::new(),
                cap,
                asked: None,
            });
            entry.asked = Some(now);
            entry.cap = cap;
            let queued = entry.queue.len();
            if queued == 0 && self.can_start(&state, model, cap, now) {
                return Some(self.start(&mut state, model));
            }
            if queued >= self.max_queue {
                return None;
            }
            let id = state.next_waiter;
            state.next_waiter += 1;
            let (send, turn) = oneshot::channel();
            state.models.get_mut(model).unwrap().queue.push_back((id, send));
            if queued == 0 {
                state.turns.push_back(model.to_string());
            }
            (id, turn)
        };
        let _waiting = Waiting {
            admission: self,
            model,
            id,
        };
        turn.await.ok()
    }

    /// Hands free workers round-robin to the models that wait and are under their cap: the waiters
    /// to wake, each with its permit (counted as running already).
    fn dispatch(self: &Arc<Self>, state: &mut State) -> Vec<(oneshot::Sender<Permit>, Permit)> {
        let mut handed = Vec::new();
        let now = Instant::now();
        while state.total < self.workers {
            let Some(turn) = (0..state.turns.len()).find(|&i| {
                let model = &state.turns[i];
                self.can_start(state, model, state.models[model].cap, now)
            }) else {
                break;
            };
            let name = state.turns.remove(turn).unwrap();
            let model = state.models.get_mut(&name).unwrap();
            let (_, waiter) = model.queue.pop_front().unwrap();
            if !model.queue.is_empty() {
                state.turns.push_back(name.clone());
            }
            let permit = self.start(state, &name);
            handed.push((waiter, permit));
        }
        handed
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
                    || !m.queue.is_empty()
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
            .map(|(name, m)| (name.clone(), m.running, m.queue.len()))
            .collect()
    }
}
