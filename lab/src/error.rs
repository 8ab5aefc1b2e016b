//! The lab's error type.

use std::io;

/// Result type used throughout the lab.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Everything that can go wrong while building or impairing a lab network.
///
/// Every variant carries enough context to act on the message alone: the
/// command line and its stderr for failed commands, the measured numbers for
/// failed verifications.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The lab cannot run on this machine (not root, a tool missing, no
    /// `/dev/net/tun`, namespaces not permitted). See [`crate::unavailable_reason`].
    #[error("network lab unavailable: {0}")]
    Unavailable(String),

    /// A command ran but exited unsuccessfully.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The full command line.
        command: String,
        /// The exit status as printed by the OS (`exit status: 1`, `signal: 9`…).
        status: String,
        /// What the command wrote to stderr (trimmed).
        stderr: String,
    },

    /// An OS operation failed (spawning a command, opening a namespace or the
    /// TUN device, a socket in a measurement…).
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    /// A caller passed an argument the lab cannot honour (bad host name,
    /// percentage above 100, hosts from another lab…).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An impairment was configured but a measurement shows it is not in
    /// effect (or a link did not come back up in time).
    #[error("impairment not in effect: {0}")]
    Verification(String),

    /// A host's namespace runtime could not be started, was already shut down,
    /// or a task on it failed.
    #[error("host `{host}`: {message}")]
    Runtime {
        /// The host's name.
        host: String,
        /// What went wrong.
        message: String,
    },
}

impl LabError {
    /// Wraps an [`io::Error`] with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}
