//! Stop signals: SIGTERM and SIGINT mean "stop cleanly" (exit 0), for every
//! daemon alike.
//!
//! [`StopSignals::block`] must run first in `main`, before any thread starts:
//! it blocks both signals in the calling thread, and every thread started
//! afterwards inherits the mask, so no executor, runtime or library thread
//! is ever interrupted by them. They stay pending until a `sigwait`
//! ([`StopSignals::wait`]) takes them: from the main thread of a daemon that
//! has nothing else to do there, or through [`StopSignals::stopped`], which
//! waits on a small thread of its own and can be awaited from async code.
//! What a daemon does on stop is its own choice (finish in-flight requests,
//! or nothing at all when everything acknowledged is already durable).

/// The blocked stop signals; see the module documentation.
pub struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    /// Blocks SIGTERM and SIGINT in this thread and every thread started after.
    pub fn block() -> std::io::Result<Self> {
        // SAFETY: sigset_t manipulation on a local value, then the thread mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let result = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if result != 0 {
                return Err(std::io::Error::from_raw_os_error(result));
            }
            Ok(Self { set })
        }
    }

    /// Waits for SIGTERM or SIGINT; returns its name.
    pub fn wait(&self) -> std::io::Result<&'static str> {
        let mut signal = 0;
        // SAFETY: `set` is a valid signal set and `signal` a valid out-parameter.
        let result = unsafe { libc::sigwait(&self.set, &mut signal) };
        if result != 0 {
            return Err(std::io::Error::from_raw_os_error(result));
        }
        let name = if signal == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        tracing::info!(signal = name, "stopping");
        Ok(name)
    }

    /// Waits on a thread of its own; the returned future completes on the
    /// first stop signal (or if the wait fails, which is logged).
    pub fn stopped(self) -> impl std::future::Future<Output = ()> + Send {
        let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
        let waiter = std::thread::Builder::new().name("stop-signals".into()).spawn(move || {
            if let Err(error) = self.wait() {
                tracing::error!(%error, "cannot wait for stop signals; stopping");
            }
            let _ = sender.send(());
        });
        if let Err(error) = &waiter {
            tracing::error!(%error, "cannot start the signal thread; stopping");
        }
        async move {
            let _ = receiver.await;
        }
    }
}
