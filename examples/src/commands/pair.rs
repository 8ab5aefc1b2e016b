//! `mesh-node nearby` and `mesh-node pair [DEVICE | --accept]`: proximity
//! pairing over the local API. Both sides poll their session, show the
//! 6-digit code, ask the user (or confirm with `--yes`) and report how the
//! session ended. Every wait is bounded: the node fails a session after
//! 120 s, and the CLI gives up on one after [`SESSION_LIMIT`].

use std::{
    collections::HashSet,
    future::Future,
    io::{BufRead, Write},
    time::Duration,
};

use anyhow::Context;
use atmosphere::{NearbyDevice, PairingMode, PairingSession};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    cli::PairArgs,
    client::Client,
    exit::TimedOut,
    output,
    proto::{PairAcceptRequest, PairRequest, PairingOverview},
};

/// How often a session is polled.
const POLL: Duration = Duration::from_millis(200);
/// How long `pair DEVICE` waits in all, unless `--timeout` says otherwise
/// (the node's own session timeout is 120 s, plus the dial).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// How long `POST /v1/pairing` (which dials the device) may take.
const REQUEST_HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `pair --accept` follows one session before giving up on it.
const SESSION_LIMIT: Duration = Duration::from_secs(150);
/// How long a single poll or decision request may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints the devices nearby.
pub async fn nearby(client: &Client, json: bool) -> anyhow::Result<()> {
    let devices = list_nearby(client, json).await?;
    if !json && devices.is_empty() {
        eprintln!(
            "devices show up when they advertise over Bluetooth LE (`mesh-node run --ble ADAPTER`) \
             or are found on the LAN by mDNS"
        );
    }
    Ok(())
}

/// Prints the devices nearby (a table, or JSON) and returns them.
async fn list_nearby(client: &Client, json: bool) -> anyhow::Result<Vec<NearbyDevice>> {
    let devices: Vec<NearbyDevice> = client.get(&["nearby"]).await?;
    if json {
        println!("{}", output::pretty_json(&devices));
    } else {
        println!("{}", output::nearby_table(&devices, output::now_ms()));
    }
    Ok(devices)
}

/// `mesh-node pair`: list, request or accept.
pub async fn pair(client: &Client, args: PairArgs) -> anyhow::Result<()> {
    if args.accept {
        return accept(client, &args).await;
    }
    match args.device.clone() {
        Some(device) => request(client, device.trim(), &args).await,
        None => {
            list_nearby(client, args.json).await?;
            eprintln!(
                "pair with one: `mesh-node pair ID` (or a multiaddr with /p2p/PEER_ID); \
                 its founder must be in pairing mode (`mesh-node pair --accept`)"
            );
            Ok(())
        }
    }
}

/// Requester side: asks `device`, compares codes, waits for the outcome.
async fn request(client: &Client, device: &str, args: &PairArgs) -> anyhow::Result<()> {
    if device.is_empty() {
        return Err(crate::exit::UsageError("the device cannot be empty".into()).into());
    }
    let limit = args.timeout.unwrap_or(REQUEST_TIMEOUT);
    let deadline = Instant::now() + limit;
    let mut stop = interrupted().context("cannot listen for Ctrl-C")?;
    let http_timeout = REQUEST_HTTP_TIMEOUT.min(limit);
    let body = PairRequest {
        device: device.to_owned(),
    };
    let asked = tokio::select! {
        asked = client.post::<_, PairingSession>(&["pairing"], &body, Some(http_timeout)) => asked?,
        () = &mut stop => anyhow::bail!("interrupted"),
    };
    let id = asked.id;
    eprintln!(
        "asking {device} to pair (session {id}, peer {})",
        asked.peer_id
    );
    let mut answers = Answers::new(args.yes);
    let session = tokio::select! {
        session = follow(client, asked, &mut answers, deadline) => session?,
        () = &mut stop => {
            reject_quietly(client, id).await;
            anyhow::bail!("interrupted: pairing session {id} rejected");
        }
    };
    finish(&session, args.json)
}

/// Prints how `session` ended: the session as JSON with `json`, else one
/// line; an error unless it completed.
fn finish(session: &PairingSession, json: bool) -> anyhow::Result<()> {
    let outcome = output::pairing_outcome(session);
    if json {
        println!("{}", output::pretty_json(session));
    }
    if session.state == "completed" {
        if !json {
            println!("{outcome}");
        }
        Ok(())
    } else {
        Err(anyhow::anyhow!(outcome))
    }
}

/// Founder side: pairing mode on, answer requests, pairing mode off on the
/// way out (also after Ctrl-C and errors).
async fn accept(client: &Client, args: &PairArgs) -> anyhow::Result<()> {
    let mut stop = interrupted().context("cannot listen for Ctrl-C")?;
    let mode: PairingMode = client
        .put(
            &["pairing", "accept"],
            &PairAcceptRequest {
                mesh: args.mesh.clone(),
                on: true,
            },
        )
        .await?;
    eprintln!(
        "pairing mode on for mesh {} ({}): waiting for pairing requests (Ctrl-C to stop)",
        mode.mesh_name.as_deref().unwrap_or("?"),
        mode.mesh_id.as_deref().unwrap_or("?")
    );
    let mut current = None;
    let mut answers = Answers::new(args.yes);
    let outcome = tokio::select! {
        outcome = serve(client, args, &mut answers, &mut current) => outcome,
        () = &mut stop => {
            eprintln!();
            Ok(())
        }
    };
    if let Some(id) = current {
        reject_quietly(client, id).await;
    }
    let off = tokio::time::timeout(
        CALL_TIMEOUT,
        client.put::<_, PairingMode>(
            &["pairing", "accept"],
            &PairAcceptRequest {
                mesh: None,
                on: false,
            },
        ),
    )
    .await;
    match off {
        Ok(Ok(_)) => eprintln!("pairing mode off"),
        Ok(Err(error)) => eprintln!("warning: cannot turn pairing mode off: {error}"),
        Err(_) => eprintln!("warning: cannot turn pairing mode off: the daemon did not answer"),
    }
    outcome
}

/// Answers pairing requests as they come; returns after the first finished
/// session with `--once`, or when `--timeout` runs out. `current` is the
/// session being followed, for the caller to reject on Ctrl-C.
async fn serve(
    client: &Client,
    args: &PairArgs,
    answers: &mut Answers,
    current: &mut Option<u64>,
) -> anyhow::Result<()> {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    // Sessions from before we started are not ours to answer.
    let before: PairingOverview = poll(client, &["pairing"], deadline).await?;
    let mut seen: HashSet<u64> = before.sessions.iter().map(|s| s.id).collect();
    loop {
        let overview: PairingOverview = poll(client, &["pairing"], deadline).await?;
        let next = overview
            .sessions
            .into_iter()
            .find(|s| s.role == "acceptor" && !seen.contains(&s.id));
        if let Some(session) = next {
            seen.insert(session.id);
            *current = Some(session.id);
            eprintln!(
                "pairing request from {}, session {}",
                output::pairing_peer(&session),
                session.id
            );
            let limit = Instant::now() + SESSION_LIMIT;
            let session_deadline = deadline.map_or(limit, |d| d.min(limit));
            let id = session.id;
            let followed = follow(client, session, answers, session_deadline).await;
            *current = None;
            let session = match followed {
                Ok(session) => session,
                Err(error) if error.is::<TimedOut>() => {
                    reject_quietly(client, id).await;
                    if args.once || deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(error);
                    }
                    eprintln!("warning: {error}; waiting for the next request");
                    continue;
                }
                Err(error) => return Err(error),
            };
            let outcome = output::pairing_outcome(&session);
            if args.json {
                println!("{}", serde_json::to_string(&session)?);
            } else {
                println!("{outcome}");
            }
            if args.once {
                return if session.state == "completed" {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(outcome))
                };
            }
            eprintln!("waiting for pairing requests (Ctrl-C to stop)");
            continue;
        }
        if !overview.mode.accepting {
            anyhow::bail!("pairing mode was turned off (by another client?)");
        }
        if let Some(deadline) = deadline {
            if Instant::now() >= deadline {
                if args.once {
                    return Err(TimedOut(format!(
                        "no pairing request finished within {}",
                        humantime::format_duration(args.timeout.unwrap_or_default())
                    ))
                    .into());
                }
                return Ok(());
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Follows `session` until it is over: shows the code, asks the user, sends
/// the decision. Past `deadline`: [`TimedOut`] (the session is rejected).
async fn follow(
    client: &Client,
    mut session: PairingSession,
    answers: &mut Answers,
    deadline: Instant,
) -> anyhow::Result<PairingSession> {
    let id = session.id;
    let id_text = id.to_string();
    let path = ["pairing", id_text.as_str()];
    let mut decided = false;
    let mut waiting_said = false;
    let result = async {
        loop {
            if session.is_over() {
                return Ok(session);
            }
            if !decided && session.state == "comparing" {
                if let Some(code) = session.code.clone() {
                    decided = true;
                    show_code(&session, &code);
                    match answers.decide(client, &path, &code, deadline).await? {
                        Answer::Ended(ended) => return Ok(*ended),
                        Answer::Yes => {
                            session = decision(client, id, "confirm").await?;
                        }
                        Answer::No => {
                            eprintln!("rejecting the pairing");
                            session = decision(client, id, "reject").await?;
                        }
                    }
                    continue;
                }
            }
            if decided && !waiting_said && session.state == "confirmed" && !session.peer_confirmed {
                waiting_said = true;
                eprintln!("confirmed; waiting for the other device…");
            }
            if Instant::now() >= deadline {
                return Err(anyhow::Error::new(TimedOut(format!(
                    "pairing session {id} did not finish in time (it was {})",
                    session.state
                ))));
            }
            tokio::time::sleep(POLL).await;
            session = poll(client, &path, Some(deadline)).await?;
        }
    }
    .await;
    if result.as_ref().is_err_and(|e| e.is::<TimedOut>()) {
        reject_quietly(client, id).await;
    }
    result
}

/// `POST /v1/pairing/{id}/{confirm|reject}` → the session; when the session
/// moved on meanwhile (409 `pairing_state`), the session as it is now.
async fn decision(client: &Client, id: u64, what: &str) -> anyhow::Result<PairingSession> {
    let id_text = id.to_string();
    let sent = tokio::time::timeout(
        CALL_TIMEOUT,
        client.post::<_, PairingSession>(&["pairing", &id_text, what], &(), None),
    )
    .await
    .map_err(|_| TimedOut(format!("the daemon did not answer the {what} in time")))?;
    match sent {
        Ok(session) => Ok(session),
        Err(error) if error.kind() == Some("pairing_state") => {
            Ok(poll(client, &["pairing", &id_text], None).await?)
        }
        Err(error) => Err(error.into()),
    }
}

/// Rejects session `id`, ignoring failures (it may be over already).
async fn reject_quietly(client: &Client, id: u64) {
    let id = id.to_string();
    let _ = tokio::time::timeout(
        CALL_TIMEOUT,
        client.post::<_, PairingSession>(&["pairing", &id, "reject"], &(), None),
    )
    .await;
}

/// `GET /v1/<path>`, bounded by [`CALL_TIMEOUT`] and `deadline`.
async fn poll<T: serde::de::DeserializeOwned>(
    client: &Client,
    path: &[&str],
    deadline: Option<Instant>,
) -> anyhow::Result<T> {
    let call_deadline = Instant::now() + CALL_TIMEOUT;
    let until = deadline.map_or(call_deadline, |d| d.max(Instant::now()).min(call_deadline));
    match tokio::time::timeout_at(until, client.get::<T>(path)).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(TimedOut("the daemon did not answer in time".into()).into()),
    }
}

/// Shows the code big and clear (on stderr, with the other prompts).
fn show_code(session: &PairingSession, code: &str) {
    let code = output::pairing_code(code);
    let width = code.chars().count() + 6;
    eprintln!();
    eprintln!(
        "pairing with {}: compare the codes on both screens",
        output::pairing_peer(session)
    );
    eprintln!();
    eprintln!("    ┌{}┐", "─".repeat(width));
    eprintln!("    │   {code}   │");
    eprintln!("    └{}┘", "─".repeat(width));
    eprintln!();
}

/// What the user answered.
enum Answer {
    /// Same code: confirm.
    Yes,
    /// Different code, no answer, end of input: reject.
    No,
    /// The session ended while we asked.
    Ended(Box<PairingSession>),
}

/// The user's answers, read line by line from stdin by a thread (started at
/// the first question; a blocked read never holds up the exit).
struct Answers {
    yes: bool,
    lines: Option<mpsc::UnboundedReceiver<Option<String>>>,
    closed: bool,
}

impl Answers {
    fn new(yes: bool) -> Self {
        Self {
            yes,
            lines: None,
            closed: false,
        }
    }

    /// Asks whether the codes match, while watching the session at `path`
    /// (it may end meanwhile) and `deadline`.
    async fn decide(
        &mut self,
        client: &Client,
        path: &[&str],
        code: &str,
        deadline: Instant,
    ) -> anyhow::Result<Answer> {
        let prompt = output::pairing_prompt(code);
        if self.yes {
            eprintln!("{}y (--yes)", prompt);
            return Ok(Answer::Yes);
        }
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        self.drain();
        loop {
            let line = tokio::select! {
                line = self.next_line() => line,
                () = tokio::time::sleep(POLL) => {
                    let session: PairingSession = poll(client, path, Some(deadline)).await?;
                    if session.is_over() {
                        eprintln!();
                        return Ok(Answer::Ended(Box::new(session)));
                    }
                    if Instant::now() >= deadline {
                        eprintln!();
                        return Err(TimedOut("no answer in time".into()).into());
                    }
                    continue;
                }
            };
            return Ok(match line {
                Some(text) if is_yes(&text) => Answer::Yes,
                Some(_) => Answer::No,
                None => {
                    eprintln!("(no input: rejecting)");
                    Answer::No
                }
            });
        }
    }

    /// The next line; `None` at the end of input.
    async fn next_line(&mut self) -> Option<String> {
        if self.closed {
            return None;
        }
        let lines = self.lines.get_or_insert_with(spawn_reader);
        match lines.recv().await.flatten() {
            Some(line) => Some(line),
            None => {
                self.closed = true;
                None
            }
        }
    }

    /// Drops lines typed before the question.
    fn drain(&mut self) {
        let Some(lines) = self.lines.as_mut() else {
            return;
        };
        while let Ok(line) = lines.try_recv() {
            if line.is_none() {
                self.closed = true;
            }
        }
    }
}

/// `y` or `yes`, any case.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// A thread sending stdin's lines, then `None` at the end of input.
fn spawn_reader() -> mpsc::UnboundedReceiver<Option<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut line = String::new();
            match lock.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) => {
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Resolves on Ctrl-C (or SIGTERM); the handlers are installed at once, so
/// a signal right after the call is not missed.
fn interrupted() -> std::io::Result<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        for yes in ["y", "Y", "yes\n", " YES "] {
            assert!(is_yes(yes), "{yes}");
        }
        for no in ["", "n", "no", "yess", "\n"] {
            assert!(!is_yes(no), "{no}");
        }
    }
}
