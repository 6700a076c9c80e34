//! Long-lived actors. They run on their own actix `System` thread; tonic handlers hold their
//! `Addr`s and `send` to them across runtimes. State lives here; durability lives in the store.

pub mod accounts;
pub mod bus;
pub mod contact_pages;
pub mod contacts;
pub mod inbox;
pub mod messaging;
pub mod subscriber;

use actix::{ArbiterHandle, System};

use crate::config::{HandOffs, RuntimeKind};
use crate::core::CoreError;

/// The actix runtime the actors live on.
pub struct ActorRuntime {
    /// Where actors are started.
    pub arbiter: ArbiterHandle,
    /// The `System` this runtime started and its thread; `None` on the caller's `System`.
    own: Option<(System, std::thread::JoinHandle<()>)>,
}

impl ActorRuntime {
    /// Starts an actix `System` on a thread of its own, scheduled as `hand_offs` says; with
    /// `SingleThread`, uses the `System` the caller runs in (`runtime::block_on`) instead.
    pub fn start(hand_offs: HandOffs, kind: RuntimeKind) -> Result<Self, CoreError> {
        if kind == RuntimeKind::SingleThread {
            // `Arbiter::current` panics outside a `System`.
            if System::try_current().is_none() {
                return Err(CoreError::internal(
                    "server.runtime = \"single_thread\" needs the server started on \
                     phantom::runtime::block_on",
                ));
            }
            return Ok(ActorRuntime {
                arbiter: actix::Arbiter::current(),
                own: None,
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = crate::sched::spawn_hand_off("phantom-actors", hand_offs, move || {
            let sys = actix::System::new();
            let _ = tx.send((System::current(), actix::Arbiter::current()));
            if let Err(e) = sys.run() {
                tracing::error!(error = %e, "actor system stopped with an error");
            }
        })
        .map_err(CoreError::internal)?;
        let (system, arbiter) = rx.recv().map_err(CoreError::internal)?;
        Ok(ActorRuntime {
            arbiter,
            own: Some((system, thread)),
        })
    }

    /// Stops every actor and waits for the thread. A `System` this runtime did not start
    /// ends with its caller's `block_on`.
    pub fn stop(&mut self) {
        if let Some((system, thread)) = self.own.take() {
            system.stop();
            let _ = thread.join();
        }
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Turns a failed `Addr::send` (actor gone, mailbox closed) into a domain error.
pub fn mailbox_error(e: actix::MailboxError) -> CoreError {
    CoreError::Unavailable(format!("service unavailable: {e}"))
}
