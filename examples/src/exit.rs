//! Exit codes: one per failure class, so scripts can tell them apart.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | bad command line or input (clap errors, invalid ARGS_JSON, bad peer id) |
//! | 3 | cannot reach the daemon (not running, no or wrong token) |
//! | 4 | RPC: no provider |
//! | 5 | RPC or operation timed out (a pairing included) |
//! | 6 | denied (ACL, handler decision, not the founder) |
//! | 7 | RPC: the remote handler failed |
//! | 8 | transport failure (call undeliverable, answer lost) |

use crate::client::ClientError;

/// Bad input detected by the CLI itself (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A wait of the CLI itself ran out (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);

/// The exit code for an error.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<UsageError>().is_some() {
        return 2;
    }
    if error.downcast_ref::<TimedOut>().is_some() {
        return 5;
    }
    let Some(client) = error.downcast_ref::<ClientError>() else {
        return 1;
    };
    match client {
        ClientError::NoDaemon { .. } | ClientError::NoToken { .. } | ClientError::Token(_) => 3,
        _ => match client.kind() {
            Some("unauthorized") => 3,
            Some("no_provider") => 4,
            Some("timeout") => 5,
            Some("denied" | "not_founder") => 6,
            Some("remote_error") => 7,
            Some("transport") => 8,
            _ => 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn codes() {
        let api = |kind: &str| {
            anyhow::Error::new(ClientError::Api {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: kind.to_owned(),
                message: String::new(),
            })
        };
        assert_eq!(exit_code(&api("no_provider")), 4);
        assert_eq!(exit_code(&api("remote_error")), 7);
        assert_eq!(exit_code(&api("unknown_mesh")), 1);
        assert_eq!(exit_code(&anyhow::Error::new(UsageError("x".into()))), 2);
        assert_eq!(exit_code(&anyhow::Error::new(TimedOut("x".into()))), 5);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        let context = anyhow::Error::new(ClientError::NoDaemon {
            addr: ([127, 0, 0, 1], 1).into(),
        })
        .context("while calling");
        assert_eq!(exit_code(&context), 3);
    }
}
