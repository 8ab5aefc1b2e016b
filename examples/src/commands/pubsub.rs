//! `mesh-node pub` and `mesh-node sub`.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{
    cli::{PubArgs, SubArgs},
    client::{Client, ClientError},
    output,
    proto::{PublishRequest, PublishResponse, SubscribeFrame},
};

/// Publishes one message.
pub async fn publish(client: &Client, args: PubArgs) -> anyhow::Result<()> {
    let request = PublishRequest {
        topic: args.topic.clone(),
        payload: Some(args.payload),
        payload_base64: None,
    };
    let answer: PublishResponse = client.post(&["publish"], &request, None).await?;
    println!(
        "published to {} ({} remote subscriber{})",
        args.topic,
        answer.delivered,
        if answer.delivered == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Prints matching messages, one per line, until `--count` is reached.
pub async fn subscribe(client: &Client, args: SubArgs) -> anyhow::Result<()> {
    let mut socket = client
        .websocket("subscribe", &[("pattern", &args.pattern)])
        .await?;
    let mut received: u64 = 0;
    while let Some(frame) = socket.next().await {
        let text = match frame.map_err(|e| ClientError::WebSocket(e.to_string()))? {
            WsMessage::Text(text) => text,
            WsMessage::Close(_) => break,
            _ => continue,
        };
        let frame: SubscribeFrame = serde_json::from_str(text.as_str())
            .map_err(|e| ClientError::Protocol(format!("bad subscription frame: {e}")))?;
        match frame {
            SubscribeFrame::Subscribed { pattern } => eprintln!("subscribed to {pattern}"),
            SubscribeFrame::Message(message) => {
                if args.json {
                    println!("{}", output::message_json(&message));
                } else {
                    println!("{}", output::message_line(&message));
                }
                received += 1;
            }
        }
        if args.count.is_some_and(|count| received >= count) {
            let _ = socket.close(None).await;
            let _ = socket.flush().await;
            return Ok(());
        }
    }
    anyhow::bail!("the daemon closed the subscription (did it shut down?)")
}
