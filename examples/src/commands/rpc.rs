//! `mesh-node call` and `mesh-node reply`.

use std::{sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt};
use libp2p::PeerId;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::exec;
use crate::{
    cli::{CallArgs, ReplyArgs},
    client::{Client, ClientError},
    exit::UsageError,
    output,
    proto::{
        decode_base64, encode_base64, CallFrame, CallRequest, CallResponse, RegisterFrame,
        ReplyFrame,
    },
};

/// Extra time the HTTP request gets beyond the RPC timeout itself.
const HTTP_GRACE: Duration = Duration::from_secs(10);
/// Longest per-call wait the daemon accepts.
const MAX_REPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// Extra time the daemon waits for an answer beyond the command's own timeout.
const REPLY_GRACE: Duration = Duration::from_secs(5);

/// Calls an RPC and prints the result as JSON.
pub async fn call(client: &Client, args: CallArgs) -> anyhow::Result<()> {
    let payload = match &args.args {
        Some(text) => {
            serde_json::from_str::<Value>(text)
                .map_err(|e| UsageError(format!("ARGS_JSON is not valid JSON: {e}")))?;
            text.as_bytes().to_vec()
        }
        None => b"null".to_vec(),
    };
    if let Some(peer) = &args.peer {
        peer.parse::<PeerId>()
            .map_err(|e| UsageError(format!("`{peer}` is not a peer id: {e}")))?;
    }
    let request = CallRequest {
        uri: args.uri,
        args: None,
        args_base64: Some(encode_base64(&payload)),
        peer: args.peer,
        timeout_ms: Some(millis(args.timeout)),
    };
    let answer: CallResponse = client
        .post(&["call"], &request, Some(args.timeout + HTTP_GRACE))
        .await?;
    let bytes = decode_base64(&answer.result_base64)
        .map_err(|e| ClientError::Protocol(format!("result_base64: {e}")))?;
    println!("{}", output::rpc_result(&bytes));
    Ok(())
}

/// Serves an RPC URI until interrupted or the daemon goes away.
pub async fn reply(client: &Client, args: ReplyArgs) -> anyhow::Result<()> {
    let timeout_ms = millis((args.timeout + REPLY_GRACE).min(MAX_REPLY_TIMEOUT)).to_string();
    let socket = client
        .websocket(
            "register",
            &[("uri", &args.uri), ("timeout_ms", &timeout_ms)],
        )
        .await?;
    let (mut sink, mut frames) = socket.split();

    // Answers from the workers funnel through one writer.
    let concurrency = usize::try_from(args.concurrency).unwrap_or(1).max(1);
    let (answers_tx, mut answers) = mpsc::channel::<ReplyFrame>(concurrency);
    let writer = tokio::spawn(async move {
        while let Some(answer) = answers.recv().await {
            let text = serde_json::to_string(&answer).unwrap_or_default();
            if sink.send(WsMessage::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let slots = Arc::new(Semaphore::new(concurrency));
    let exec_command: Option<Arc<str>> = args.exec.map(Arc::from);
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let outcome = loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            _ = &mut interrupted => break Ok(()),
        };
        let text = match frame {
            None | Some(Ok(WsMessage::Close(_))) => {
                break Err(anyhow::anyhow!(
                    "the daemon closed the connection (did it shut down?)"
                ))
            }
            Some(Err(e)) => break Err(ClientError::WebSocket(e.to_string()).into()),
            Some(Ok(WsMessage::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        let frame = match serde_json::from_str::<RegisterFrame>(text.as_str()) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unknown frame from the daemon");
                continue;
            }
        };
        match frame {
            RegisterFrame::Registered { uri } => eprintln!("serving {uri}"),
            RegisterFrame::Error { error } => eprintln!("warning: the daemon says: {error}"),
            RegisterFrame::Call(call) => {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break Ok(());
                };
                let answers = answers_tx.clone();
                let command = exec_command.clone();
                let timeout = args.timeout;
                tokio::spawn(async move {
                    let answer = answer(call, command.as_deref(), timeout).await;
                    let _ = answers.send(answer).await;
                    drop(slot);
                });
            }
        }
    };
    drop(answers_tx);
    // Let in-flight answers go out, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    outcome
}

/// Computes the answer to one call: the command's output, or the args echoed.
async fn answer(call: CallFrame, command: Option<&str>, timeout: Duration) -> ReplyFrame {
    let id = call.id;
    let Some(command) = command else {
        return ReplyFrame {
            id,
            result_base64: Some(call.args_base64),
            ..ReplyFrame::default()
        };
    };
    let input =
        decode_base64(&call.args_base64).unwrap_or_else(|_| call.args.to_string().into_bytes());
    let env = [
        ("ATMOSPHERE_URI", call.uri.as_str()),
        ("ATMOSPHERE_CALLER", call.caller.as_str()),
    ];
    match exec::run(command, &input, &env, timeout).await {
        Ok(stdout) => match exec::parse_output(&stdout) {
            Some(value) => ReplyFrame {
                id,
                result: Some(value),
                ..ReplyFrame::default()
            },
            None => ReplyFrame {
                id,
                result_base64: Some(encode_base64(&stdout)),
                ..ReplyFrame::default()
            },
        },
        Err(error) => {
            tracing::debug!(uri = %call.uri, %error, "command failed");
            ReplyFrame {
                id,
                error: Some(error.to_string()),
                ..ReplyFrame::default()
            }
        }
    }
}

/// Whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
