//! The CLI side of the local API: an authenticated HTTP and WebSocket client.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use futures::{SinkExt, StreamExt};
use reqwest::{header::AUTHORIZATION, Method, StatusCode, Url};
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{self, client::IntoClientRequest, http::HeaderValue, Message as WsMessage},
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    cli::GlobalArgs,
    proto::{ErrorBody, WatchFrame},
    token::{read_token, token_path, TokenError},
};

/// How long to wait for the TCP connection to the daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A WebSocket connection to the daemon.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the API address.
    #[error("no mesh-node daemon at {addr} — start one with `mesh-node run`")]
    NoDaemon {
        /// The API address.
        addr: SocketAddr,
    },
    /// Something listens, but this data dir has no token.
    #[error("no API token at {} — is the daemon at {addr} running with this --data-dir?", path.display())]
    NoToken {
        /// Where the token was expected.
        path: PathBuf,
        /// The API address.
        addr: SocketAddr,
    },
    /// The token file is unreadable or malformed.
    #[error(transparent)]
    Token(TokenError),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The error kind (`unknown_mesh`, `no_provider`, …).
        kind: String,
        /// The daemon's message.
        message: String,
    },
    /// The HTTP exchange failed midway.
    #[error("request to the daemon at {addr} failed: {source}")]
    Http {
        /// The API address.
        addr: SocketAddr,
        /// What happened.
        source: reqwest::Error,
    },
    /// The WebSocket failed.
    #[error("websocket to the daemon failed: {0}")]
    WebSocket(String),
    /// The daemon's answer was not what the API promises.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API error kind, if the daemon answered with one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Self::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// An authenticated connection to one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    addr: SocketAddr,
    token: String,
}

impl Client {
    /// Reads the token from the data dir. A missing token is reported as
    /// "no daemon" when nothing listens at the API address.
    pub async fn connect(global: &GlobalArgs) -> Result<Self, ClientError> {
        let data_dir = global.data_dir();
        let addr = global.api;
        let token = match read_token(&data_dir) {
            Ok(token) => token,
            Err(TokenError::Missing(_)) => {
                if !is_listening(addr).await {
                    return Err(ClientError::NoDaemon { addr });
                }
                return Err(ClientError::NoToken {
                    path: token_path(&data_dir),
                    addr,
                });
            }
            Err(error) => return Err(ClientError::Token(error)),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|source| ClientError::Http { addr, source })?;
        Ok(Self { http, addr, token })
    }

    /// `GET /v1/<path>`.
    pub async fn get<T: DeserializeOwned>(&self, path: &[&str]) -> Result<T, ClientError> {
        let response = self.send(Method::GET, path, None::<&()>, None).await?;
        decode(response).await
    }

    /// `POST /v1/<path>` with a JSON body; `timeout` bounds the whole exchange.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &[&str],
        body: &B,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let response = self.send(Method::POST, path, Some(body), timeout).await?;
        decode(response).await
    }

    /// `PUT /v1/<path>` with a JSON body.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &[&str],
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self.send(Method::PUT, path, Some(body), None).await?;
        decode(response).await
    }

    /// `DELETE /v1/<path>`.
    pub async fn delete(&self, path: &[&str]) -> Result<(), ClientError> {
        let response = self.send(Method::DELETE, path, None::<&()>, None).await?;
        check(response).await.map(drop)
    }

    /// Opens the WebSocket route `/v1/<route>?<query>` (`route` may have
    /// several `/`-separated segments, e.g. `peers/watch`).
    pub async fn websocket(
        &self,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<Socket, ClientError> {
        let segments: Vec<&str> = route.split('/').collect();
        let mut url = self.url(&segments)?;
        url.query_pairs_mut().extend_pairs(query);
        url.set_scheme("ws")
            .map_err(|()| ClientError::Protocol(format!("cannot make a ws URL of {url}")))?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::WebSocket(e.to_string()))?;
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        request.headers_mut().insert(AUTHORIZATION, auth);
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _response)) => Ok(socket),
            Err(tungstenite::Error::Io(e)) if is_refused(&e) => {
                Err(ClientError::NoDaemon { addr: self.addr })
            }
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status();
                let body = response.body().as_deref().unwrap_or_default();
                Err(api_error(status, body))
            }
            Err(e) => Err(ClientError::WebSocket(e.to_string())),
        }
    }

    /// Opens `GET /v1/peers/watch`: the peers, then their status changes.
    pub async fn watch_peers(&self) -> Result<PeerWatch, ClientError> {
        Ok(PeerWatch {
            socket: self.websocket("peers/watch", &[]).await?,
        })
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .http
            .request(method, self.url(path)?)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        request.send().await.map_err(|source| {
            if source.is_connect() {
                ClientError::NoDaemon { addr: self.addr }
            } else {
                ClientError::Http {
                    addr: self.addr,
                    source,
                }
            }
        })
    }

    /// `http://ADDR/v1/<segments…>`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = Url::parse(&format!("http://{}/", self.addr))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| ClientError::Protocol("API URL cannot have a path".to_owned()))?
            .clear()
            .push("v1")
            .extend(segments);
        Ok(url)
    }
}

/// An open `GET /v1/peers/watch` socket.
pub struct PeerWatch {
    socket: Socket,
}

impl PeerWatch {
    /// The next frame, parsed and as the JSON text the daemon sent; `None`
    /// once the daemon closed the socket.
    pub async fn next(&mut self) -> Result<Option<(WatchFrame, String)>, ClientError> {
        while let Some(message) = self.socket.next().await {
            let text = match message.map_err(|e| ClientError::WebSocket(e.to_string()))? {
                WsMessage::Text(text) => text.as_str().to_owned(),
                WsMessage::Close(_) => break,
                _ => continue,
            };
            let frame = serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("bad peer watch frame: {e}")))?;
            return Ok(Some((frame, text)));
        }
        Ok(None)
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        let _ = self.socket.flush().await;
    }
}

/// Whether something accepts TCP connections at `addr`.
async fn is_listening(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Whether a connection error means nothing listens there.
fn is_refused(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
    )
}

/// Passes 2xx answers, turns others into [`ClientError::Api`].
async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(api_error(status, &body))
}

/// Checks the status, then parses the JSON body.
async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let response = check(response).await?;
    let body = response
        .bytes()
        .await
        .map_err(|e| ClientError::Protocol(format!("reading the answer: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The error a non-2xx answer carries (`{"error","kind"}`), or its status.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error, kind }) => ClientError::Api {
            status,
            kind,
            message: error,
        },
        Err(_) => ClientError::Api {
            status,
            kind: "http".to_owned(),
            message: format!(
                "the daemon answered {status}{}",
                match String::from_utf8_lossy(body).trim() {
                    "" => String::new(),
                    text => format!(": {}", text.chars().take(200).collect::<String>()),
                }
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_carry_the_daemon_message() {
        let error = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":"unknown mesh `x`","kind":"unknown_mesh"}"#,
        );
        assert_eq!(error.to_string(), "unknown mesh `x`");
        assert_eq!(error.kind(), Some("unknown_mesh"));
        let error = api_error(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(error.kind(), Some("http"));
    }
}
