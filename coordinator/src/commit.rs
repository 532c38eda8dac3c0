//! Group commit. One thread owns the sweep state and applies requests in batches: every
//! request that arrived while the previous batch was being committed goes into the next
//! transaction, so many workers share one fsync, and no reply leaves before its
//! transaction is durable. Replies are callbacks, so any transport can wait on them
//! (the gRPC server completes a future).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::StateError;
use crate::state::SweepState;

/// Requests taken into one transaction at most.
const MAX_BATCH: usize = 8192;
/// How often an idle state thread wakes to expire lapsed leases.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// Milliseconds since the Unix epoch: lease deadlines survive restarts.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What every request may read besides the state; the same for a whole batch.
pub struct Context {
    pub now_ms: u64,
    pub draining: bool,
}

/// Why a request has no answer.
#[derive(Debug)]
pub enum CallError {
    /// The request itself was refused (unknown worker or task, mismatched result, …).
    Refused(StateError),
    /// Its batch could not be made durable, or the coordinator is stopping: retry.
    Unavailable(String),
}

/// Called with the outcome of the batch's commit: Ok once it is durable.
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A request, given its turn: applied inside the current transaction, it returns its reply
/// and how it left the storage (a storage error rolls the whole batch back); refused when
/// no transaction could start, it replies at once without touching the state.
type Job = Box<dyn FnOnce(Turn<'_>) -> Option<(Reply, Storage)> + Send>;

/// What a batch can do with a request.
enum Turn<'a> {
    Apply(&'a mut SweepState, &'a Context),
    /// Why the request cannot be applied.
    Refuse(String),
}

/// How a step of a batch (a request, lease expiry, the commit) left the storage.
#[derive(Debug)]
enum Storage {
    Fine,
    /// A storage error: the batch is rolled back.
    Failed,
    /// No room to write (the error's message): every later batch would fail too, so the
    /// thread stops.
    Full(String),
}

impl Storage {
    fn of<T>(outcome: &Result<T, StateError>) -> Self {
        match outcome {
            Err(e) if e.is_disk_full() => Storage::Full(e.to_string()),
            Err(e) if e.is_storage() => Storage::Failed,
            _ => Storage::Fine,
        }
    }
}

/// Why the state thread stopped by itself, once it has; shared by every handle.
type Halted = Arc<OnceLock<String>>;

/// Notes how a step left the storage: true on a storage error; on a full disk, also
/// records why the thread stops, since every later batch would fail too (and roll back
/// lease renewals, so leases would seem to expire over and over).
fn note(storage: Storage, halted: &OnceLock<String>, db: &Path) -> bool {
    let error = match storage {
        Storage::Fine => return false,
        Storage::Failed => return true,
        Storage::Full(error) => error,
    };
    let dir = db.parent().unwrap_or(db);
    let _ = halted.set(format!(
        "the sweep's state directory {} is out of space ({error}); the coordinator stopped \
         rather than acknowledge what it cannot store, and everything it acknowledged is on \
         disk. Free space there and start it again to resume: workers wait for it (up to \
         their --give-up-after) and deliver what they hold",
        dir.display()
    ));
    true
}

/// A handle to the state thread; cheap to clone. The thread stops when every handle
/// is dropped, or by itself when the state's disk is full (see `halted`), leaving the
/// database checkpointed and closed.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
    draining: Arc<AtomicBool>,
    halted: Halted,
}

impl GroupCommit {
    /// Starts the state thread, which owns `state` from now on.
    pub fn spawn(state: SweepState) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let draining = Arc::new(AtomicBool::new(false));
        let halted = Halted::default();
        let (flag, halt) = (draining.clone(), halted.clone());
        let thread = std::thread::Builder::new()
            .name("sweep-state".into())
            .spawn(move || run(state, &inbox, &flag, &halt))?;
        Ok((
            Self {
                jobs,
                draining,
                halted,
            },
            thread,
        ))
    }

    /// Runs `f` on the state in the next batch; `reply` gets its result once the batch
    /// is durable (or why it is not). Refused at once when the thread has stopped; a
    /// thread stopping with the request queued drops `reply` uncalled.
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SweepState, &Context) -> Result<T, StateError> + Send + 'static,
        reply: impl FnOnce(Result<T, CallError>) + Send + 'static,
    ) -> Result<(), CallError> {
        let job: Job = Box::new(move |turn| {
            let (state, context) = match turn {
                Turn::Apply(state, context) => (state, context),
                Turn::Refuse(why) => {
                    reply(Err(CallError::Unavailable(why)));
                    return None;
                }
            };
            let outcome = f(state, context);
            let storage = Storage::of(&outcome);
            let reply: Reply = Box::new(move |committed| {
                reply(match committed {
                    Ok(()) => outcome.map_err(CallError::Refused),
                    Err(why) => Err(CallError::Unavailable(why)),
                })
            });
            Some((reply, storage))
        });
        self.jobs
            .send(job)
            .map_err(|_| CallError::Unavailable("the coordinator is shutting down".into()))
    }

    /// Stops leasing (requests see `Context::draining`).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Why the state thread stopped by itself (its disk is full), once it has. It set
    /// this before replying to the batch that found the disk full, and requests it had
    /// not taken yet are refused as `Unavailable`.
    pub fn halted(&self) -> Option<String> {
        self.halted.get().cloned()
    }
}

/// The state thread: batches until every handle is dropped or the disk is full.
fn run(
    mut state: SweepState,
    inbox: &mpsc::Receiver<Job>,
    draining: &AtomicBool,
    halted: &OnceLock<String>,
) {
    let db = state.db_path().to_path_buf();
    loop {
        // Wake regularly even when idle, to expire lapsed leases.
        let first = match inbox.recv_timeout(IDLE_WAKE) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let context = Context {
            now_ms: now_ms(),
            draining: draining.load(Ordering::SeqCst),
        };
        apply_batch(&mut state, batch, &context, halted, &db);
        if halted.get().is_some() {
            // Jobs still queued are dropped: their callers hear the coordinator stopped.
            tracing::error!("the state directory is out of space: state thread stopped");
            break;
        }
    }
}

/// Applies `batch` (and lease expiry) in one transaction, then replies to each job with
/// the commit's outcome: every reply leaves after the commit, none before. A full disk
/// sets `halted` before the replies leave. Without a transaction nothing is applied.
fn apply_batch(
    state: &mut SweepState,
    batch: Vec<Job>,
    context: &Context,
    halted: &OnceLock<String>,
    db: &Path,
) {
    let started = Instant::now();
    let requests = batch.len();
    let begun = state.begin();
    if let Err(e) = &begun {
        tracing::error!(error = %e, "cannot start a transaction");
        note(Storage::of(&begun), halted, db);
        for job in batch {
            job(Turn::Refuse(e.to_string()));
        }
        return;
    }
    let expired = state.decide(|schedule| Ok(schedule.expire(context.now_ms)));
    if let Err(e) = &expired {
        tracing::error!(error = %e, "expiring leases");
    }
    let mut storage_error = note(Storage::of(&expired), halted, db);
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        if let Some((reply, storage)) = job(Turn::Apply(state, context)) {
            storage_error |= note(storage, halted, db);
            replies.push(reply);
        }
    }
    let outcome = if storage_error {
        if let Err(e) = state.rollback_and_reload() {
            tracing::error!(error = %e, "reloading the state after a storage error");
        }
        Err("coordinator storage error; retry".to_string())
    } else {
        let committed = state.commit();
        note(Storage::of(&committed), halted, db);
        if committed.is_ok() && requests > 0 {
            let metrics = state.metrics();
            metrics.batch_requests.observe(requests as f64);
            metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        committed.map_err(|e| {
            tracing::error!(error = %e, "commit failed");
            format!("coordinator storage error: {e}")
        })
    };
    for reply in replies {
        reply(outcome.clone());
    }
}
