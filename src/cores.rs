//! The threads sessions run on: one single-threaded runtime per core, each session on the least
//! loaded.
//!
//! A transfer's tasks wake each other for every buffer. On one work-stealing runtime a wake may
//! rouse the parked worker of the other core to steal the woken task, and that hand-over cost
//! more CPU per GiB than a core's own queue: with sessions pinned to a thread, a download from a
//! plain backend costs about 8 % less, and eight at once keep their throughput, since the
//! sessions spread over the cores (docs/ARCHITECTURE.md, "Threads").

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The session threads. Dropping the last handle stops them, and whatever still runs there is
/// cut: the drain's end.
pub(crate) struct Cores {
    first: Core,
    others: Vec<Core>,
}

struct Core {
    runtime: Handle,
    /// Sessions seated here now.
    load: Arc<AtomicUsize>,
    /// Dropped with the `Cores`: the thread's `block_on` returns and its runtime drops.
    _stop: oneshot::Sender<()>,
}

/// A session's place on a core, counted in the core's load until dropped.
pub(crate) struct Seat {
    load: Arc<AtomicUsize>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cores {
    /// One thread per CPU this process may use (its affinity and cgroup quota count).
    pub(crate) fn start() -> io::Result<Cores> {
        Cores::with(std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }

    fn with(count: NonZeroUsize) -> io::Result<Cores> {
        let first = Core::start(0)?;
        let others = (1..count.get())
            .map(Core::start)
            .collect::<io::Result<_>>()?;
        Ok(Cores { first, others })
    }

    /// The least loaded core's runtime, and the session's seat there.
    pub(crate) fn seat(&self) -> (&Handle, Seat) {
        let mut core = &self.first;
        for other in &self.others {
            if other.load() < core.load() {
                core = other;
            }
        }
        core.load.fetch_add(1, Ordering::Relaxed);
        let seat = Seat {
            load: Arc::clone(&core.load),
        };
        (&core.runtime, seat)
    }
}

impl Core {
    fn start(index: usize) -> io::Result<Core> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("ftpsgate-core-{index}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(Core {
            runtime: handle,
            load: Arc::new(AtomicUsize::new(0)),
            _stop: stop,
        })
    }

    fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the thread `runtime` runs its tasks on.
    fn thread_of(runtime: &Handle) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        let name = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        name.unwrap()
    }

    #[test]
    fn sessions_go_to_the_least_loaded_core_thread_and_leave_with_their_seat() {
        let cores = Cores::with(NonZeroUsize::new(3).unwrap()).unwrap();
        let (a, seat_a) = cores.seat();
        let (b, seat_b) = cores.seat();
        let (c, _seat_c) = cores.seat();
        let names = [thread_of(a), thread_of(b), thread_of(c)];
        assert_eq!(
            names,
            ["ftpsgate-core-0", "ftpsgate-core-1", "ftpsgate-core-2"]
        );
        drop(seat_b);
        assert_eq!(
            thread_of(cores.seat().0),
            "ftpsgate-core-1",
            "the core a session left"
        );
        drop(seat_a);
        assert_eq!(thread_of(cores.seat().0), "ftpsgate-core-0");
    }
}
