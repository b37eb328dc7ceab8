//! A WebSocket client of the gateway's live protocol, and a reader of the events stream.

use super::*;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client of the live protocol. Frames are read as plain JSON, not with the gateway's types,
/// so a change of the wire format shows up here.
pub struct LiveClient {
    socket: Socket,
    /// A snapshot whose frames are still coming (kept here: `next` may be cancelled between two).
    snapshot: Option<serde_json::Value>,
    /// A message already read (the first snapshot, see [`LiveClient::subscribed`]), returned first.
    read_ahead: Option<serde_json::Value>,
}

impl LiveClient {
    /// Connects with the test's token at that gateway (see [`login`]).
    pub async fn connect(url: &str) -> Result<LiveClient> {
        let host = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("");
        LiveClient::connect_as(url, token_for(host).as_deref(), None).await
    }

    /// Connects offering this token (as the `bearer.<token>` subprotocol) and this Origin.
    pub async fn connect_as(url: &str, token: Option<&str>, origin: Option<&str>) -> Result<LiveClient> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        let protocols = match token {
            Some(t) => format!("vigie.v1, bearer.{t}"),
            None => "vigie.v1".to_owned(),
        };
        request.headers_mut().insert("sec-websocket-protocol", protocols.parse()?);
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse()?);
        }
        let (socket, _) =
            tokio_tungstenite::connect_async(request).await.with_context(|| format!("connecting to {url}"))?;
        Ok(LiveClient { socket, snapshot: None, read_ahead: None })
    }

    /// Connects, then waits for the first snapshot (kept: `next` still returns it first). The
    /// gateway takes a subscription's snapshot after the upgrade, so an event published before the
    /// snapshot came may be inside it rather than a delta: a test that counts deltas starts here.
    pub async fn subscribed(url: &str) -> Result<LiveClient> {
        let mut client = LiveClient::connect(url).await?;
        let first = client.next().await?;
        anyhow::ensure!(first["type"] == "snapshot", "the first message is not a snapshot: {first}");
        client.read_ahead = Some(first);
        Ok(client)
    }

    /// The next server message as JSON: a text frame, or a whole snapshot however many frames
    /// carried it (their lists joined, `more` gone, and `frames` set to how many there were).
    pub async fn next(&mut self) -> Result<serde_json::Value> {
        if let Some(message) = self.read_ahead.take() {
            return Ok(message);
        }
        loop {
            let mut frame = self.next_frame().await?;
            if frame["type"] != "snapshot" {
                anyhow::ensure!(self.snapshot.is_none(), "a {} frame in the middle of a snapshot", frame["type"]);
                return Ok(frame);
            }
            let more = frame["more"] == true;
            let whole = match self.snapshot.take() {
                None => {
                    frame["frames"] = 1.into();
                    frame
                }
                Some(mut whole) => {
                    anyhow::ensure!(whole["seq"] == frame["seq"], "a snapshot's frames of different seq");
                    for list in ["assets", "alarms", "commands", "kpis"] {
                        let part = frame[list].as_array().cloned().unwrap_or_default();
                        whole[list].as_array_mut().context("a snapshot's list")?.extend(part);
                    }
                    whole["frames"] = (whole["frames"].as_u64().unwrap_or(0) + 1).into();
                    whole
                }
            };
            if more {
                self.snapshot = Some(whole);
            } else {
                let mut whole = whole;
                if let Some(object) = whole.as_object_mut() {
                    object.remove("more");
                }
                return Ok(whole);
            }
        }
    }

    /// The next text frame as JSON, as it came.
    pub async fn next_frame(&mut self) -> Result<serde_json::Value> {
        if let Some(message) = self.read_ahead.take() {
            return Ok(message);
        }
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .map_err(|_| anyhow!("no frame from the gateway within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("the gateway closed the connection"))??;
            match message {
                tokio_tungstenite::tungstenite::Message::Text(text) => return Ok(serde_json::from_str(&text)?),
                tokio_tungstenite::tungstenite::Message::Close(frame) => bail!("closed by the gateway: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads frames until `done` is true for one; returns every frame read. Fails after
    /// [`UNTIL`], even while frames keep coming.
    pub async fn until(&mut self, mut done: impl FnMut(&serde_json::Value) -> bool) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + UNTIL;
        let mut frames = Vec::new();
        loop {
            if Instant::now() > deadline {
                let last: Vec<_> = frames.iter().rev().take(3).collect();
                bail!("condition not met within {UNTIL:?}; last frames: {last:?}");
            }
            let frame = self.next().await?;
            let stop = done(&frame);
            frames.push(frame);
            if stop {
                return Ok(frames);
            }
        }
    }

    /// Reads until the gateway closes the connection; returns its close code (frames meanwhile
    /// are skipped).
    pub async fn close_code(&mut self) -> Result<u16> {
        loop {
            let message = tokio::time::timeout(UNTIL, self.socket.next())
                .await
                .map_err(|_| anyhow!("the gateway did not close the connection within {UNTIL:?}"))?
                .ok_or_else(|| anyhow!("the connection ended without a close frame"))?;
            match message {
                Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) => return Ok(frame.code.into()),
                Ok(tokio_tungstenite::tungstenite::Message::Close(None)) => bail!("closed without a code"),
                Ok(_) => continue,
                Err(e) => bail!("the connection failed before a close frame: {e}"),
            }
        }
    }

    /// The WebSocket itself, for a test that reads and writes at once (split it).
    pub fn into_socket(self) -> Socket {
        self.socket
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.socket.send(tokio_tungstenite::tungstenite::Message::Text(text.into())).await?;
        Ok(())
    }

    /// Reads frames until `done` says so; returns the event id of every delta of this kind of
    /// event seen meanwhile (in order). Fails after [`UNTIL`], even while frames keep coming.
    pub async fn collect_event_ids(
        &mut self,
        kind: &str,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> Result<Vec<String>> {
        let deadline = Instant::now() + UNTIL;
        let mut ids = Vec::new();
        while !done(&ids) {
            if Instant::now() > deadline {
                bail!("condition not met within {UNTIL:?}; {} {kind} events seen", ids.len());
            }
            let frame = self.next().await?;
            if frame["type"] == "delta" && frame["event"]["kind"] == kind {
                let id = frame["event"]["id"].as_str().ok_or_else(|| anyhow!("delta without event id: {frame}"))?;
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}

/// What the stream holds: event id -> how many times, the ids of lamp status events, and its
/// last sequence.
pub struct StreamContent {
    pub ids: HashMap<String, usize>,
    /// When each sequence was stored (the server's clock, which libfaketime does not shift: a
    /// Go binary reads the time without libc).
    pub published: BTreeMap<u64, std::time::SystemTime>,
    /// When each event was first stored, by its id.
    pub published_by_id: HashMap<String, std::time::SystemTime>,
    pub status_ids: std::collections::HashSet<String>,
    pub last: u64,
}

/// Reads the whole events stream (as the gateway, which may).
pub async fn read_events_stream(nats: &NatsServer) -> Result<StreamContent> {
    let client = nats.client_as("gateway").await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    let last = stream.info().await?.state.last_sequence;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut status_ids = std::collections::HashSet::new();
    let mut published = BTreeMap::new();
    let mut published_by_id = HashMap::new();
    let mut seen = 0;
    while seen < last {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("reading the stream")?
            .context("the stream ended")??;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        seen = info.stream_sequence;
        let nanos = u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0);
        published.insert(seen, std::time::UNIX_EPOCH + Duration::from_nanos(nanos));
        if let Ok(event) = proto::event::decode(&message.payload) {
            published_by_id
                .entry(event.event.id.clone())
                .or_insert(std::time::UNIX_EPOCH + Duration::from_nanos(nanos));
            if event.event.kind == "streetlight_status" {
                status_ids.insert(event.event.id.clone());
            }
            *ids.entry(event.event.id.clone()).or_default() += 1;
        }
    }
    Ok(StreamContent { ids, published, published_by_id, status_ids, last })
}
