//! A hostile peer: a bare libp2p swarm that announces files to the tracker and answers transfer
//! requests however a test says, including never (it keeps the stream open and silent).

use std::time::Duration;

use anyhow::Context;
use bitswarm_protocols::{
    tracker::{self, AnnouncedFile},
    tracker_codec, transfer, TrackerCodec, TransferCodec, TRACKER_PROTOCOL, TRANSFER_PROTOCOL,
};
use futures::StreamExt;
use libp2p::{
    noise, request_response,
    request_response::{ProtocolSupport, ResponseChannel},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, SwarmBuilder,
};
use tokio::task::JoinHandle;

#[derive(NetworkBehaviour)]
struct Hostile {
    tracker: request_response::Behaviour<TrackerCodec>,
    transfer: request_response::Behaviour<TransferCodec>,
}

/// How a hostile peer answers one transfer request: `Some` sends it, `None` never answers.
pub type Answer = Box<dyn FnMut(&transfer::Request) -> Option<transfer::Response> + Send>;

/// A running hostile peer; stopped when dropped.
pub struct HostilePeer {
    /// Its peer id.
    pub peer: PeerId,
    task: JoinHandle<()>,
}

impl HostilePeer {
    /// Starts a peer on 127.0.0.1 that announces `files` to the tracker at `tracker` (with
    /// `/p2p/<id>`) and answers requests with `answer`. Returns once the announce is
    /// acknowledged.
    pub async fn start(
        tracker: &Multiaddr,
        files: Vec<AnnouncedFile>,
        mut answer: Answer,
    ) -> anyhow::Result<Self> {
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| Hostile {
                tracker: request_response::Behaviour::with_codec(
                    tracker_codec(),
                    [(TRACKER_PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
                transfer: request_response::Behaviour::with_codec(
                    TransferCodec::default(),
                    [(TRANSFER_PROTOCOL, ProtocolSupport::Inbound)],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(600)),
                ),
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let listen = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        let Some(libp2p::multiaddr::Protocol::P2p(tracker_id)) = tracker.iter().last() else {
            anyhow::bail!("no /p2p in the tracker address {tracker}")
        };
        swarm.add_peer_address(tracker_id, tracker.clone());
        let announce = tracker::Announce {
            files,
            addrs: vec![listen],
        };
        swarm
            .behaviour_mut()
            .tracker
            .send_request(&tracker_id, tracker::Request::Announce(announce));
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(HostileEvent::Tracker(
                        request_response::Event::Message {
                            message: request_response::Message::Response { .. },
                            ..
                        },
                    )) => return Ok(()),
                    SwarmEvent::Behaviour(HostileEvent::Tracker(
                        request_response::Event::OutboundFailure { error, .. },
                    )) => anyhow::bail!("announce failed: {error}"),
                    _ => {}
                }
            }
        })
        .await
        .context("no answer to the announce")??;
        let peer = *swarm.local_peer_id();
        let task = tokio::spawn(async move {
            // Unanswered requests keep their streams open for as long as the peer runs.
            let mut silent: Vec<ResponseChannel<transfer::Response>> = Vec::new();
            loop {
                if let SwarmEvent::Behaviour(HostileEvent::Transfer(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) = swarm.select_next_some().await
                {
                    match answer(&request) {
                        Some(response) => {
                            let _ = swarm
                                .behaviour_mut()
                                .transfer
                                .send_response(channel, response);
                        }
                        None => silent.push(channel),
                    }
                }
            }
        });
        Ok(HostilePeer { peer, task })
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A transfer client codec that writes requests and never reads an answer: the server's
/// response stays unread, holding whatever the server keeps for it.
#[derive(Debug, Clone, Default)]
struct NeverRead;

impl request_response::Codec for NeverRead {
    type Protocol = libp2p::StreamProtocol;
    type Request = transfer::Request;
    type Response = ();

    async fn read_request<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
    ) -> std::io::Result<Self::Request>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        Err(std::io::Error::other("client only"))
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, _: &mut T) -> std::io::Result<()>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        futures::future::pending().await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        request: Self::Request,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &request).map_err(std::io::Error::other)?;
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Self::Response,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Err(std::io::Error::other("client only"))
    }
}

/// A swarm with a fresh identity on `listen` (TCP; dials go out from its port) running
/// `behaviour`, with connections kept for ten minutes.
fn swarm<B: NetworkBehaviour>(
    listen: &str,
    behaviour: B,
) -> anyhow::Result<(libp2p::Swarm<B>, Multiaddr)> {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    let addr: Multiaddr = listen.parse()?;
    swarm.listen_on(addr.clone())?;
    Ok((swarm, addr))
}

/// Peers that each ask `target` for `requests` pieces of `file` (indices `0..pieces`, round
/// robin) and never read the answers. Stopped when dropped.
pub struct SlowReaders {
    tasks: Vec<JoinHandle<()>>,
}

impl SlowReaders {
    /// Starts `peers` such peers on 127.0.0.1.
    pub fn start(
        target: &Multiaddr,
        file: bitswarm_protocols::FileId,
        pieces: u32,
        peers: usize,
        requests: usize,
    ) -> anyhow::Result<Self> {
        let Some(libp2p::multiaddr::Protocol::P2p(target_id)) = target.iter().last() else {
            anyhow::bail!("no /p2p in {target}")
        };
        let mut tasks = Vec::new();
        for _ in 0..peers {
            let behaviour = request_response::Behaviour::with_codec(
                NeverRead,
                [(TRANSFER_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(600))
                    .with_max_concurrent_streams(requests + 8),
            );
            let (mut swarm, _) = swarm("/ip4/127.0.0.1/tcp/0", behaviour)?;
            swarm.add_peer_address(target_id, target.clone());
            for i in 0..requests {
                let index = (i as u32) % pieces.max(1);
                let request = transfer::Request::Piece {
                    id: file,
                    index,
                    expect: 0,
                };
                swarm.behaviour_mut().send_request(&target_id, request);
            }
            tasks.push(tokio::spawn(async move {
                loop {
                    swarm.select_next_some().await;
                }
            }));
        }
        Ok(SlowReaders { tasks })
    }
}

impl Drop for SlowReaders {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connections from many identities, all from one source address: each a TCP socket bound to
/// that address, upgraded by hand with Noise (a fresh key) and yamux, then held open.
pub struct Flood {
    /// The upgraded connections (dropping one closes it).
    _connections: Vec<
        libp2p::yamux::Muxer<
            multistream_select::Negotiated<
                libp2p::noise::Output<multistream_select::Negotiated<FloodStream>>,
            >,
        >,
    >,
    /// Connections whose handshake completed.
    pub upgraded: usize,
}

type FloodStream = tokio_util::compat::Compat<tokio::net::TcpStream>;

impl Flood {
    /// Opens `peers` connections to `target` (an `ip4/tcp` address) from `from_ip`.
    pub async fn start(
        target: &Multiaddr,
        from_ip: std::net::Ipv4Addr,
        peers: usize,
    ) -> anyhow::Result<Self> {
        use libp2p::core::upgrade::OutboundConnectionUpgrade;
        use multistream_select::{dialer_select_proto, Version};
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let dst = socket_addr(target)?;
        let mut connections = Vec::new();
        let mut upgraded = 0;
        for _ in 0..peers {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::from((from_ip, 0)))?;
            let Ok(stream) = socket.connect(dst).await else {
                continue;
            };
            let key = libp2p::identity::Keypair::generate_ed25519();
            let connection = async {
                let (noise_id, io) =
                    dialer_select_proto(stream.compat(), ["/noise"], Version::V1).await?;
                let (_, secure) = noise::Config::new(&key)?
                    .upgrade_outbound(io, noise_id)
                    .await?;
                let (yamux_id, io) =
                    dialer_select_proto(secure, ["/yamux/1.0.0"], Version::V1).await?;
                let muxer = yamux::Config::default()
                    .upgrade_outbound(io, yamux_id)
                    .await?;
                anyhow::Ok(muxer)
            };
            if let Ok(Ok(muxer)) = tokio::time::timeout(Duration::from_secs(5), connection).await {
                upgraded += 1;
                connections.push(muxer);
            }
        }
        Ok(Flood {
            _connections: connections,
            upgraded,
        })
    }
}

/// Asks the tracker at `tracker` (with `/p2p/<id>`) who holds `file`.
pub async fn lookup(
    tracker: &Multiaddr,
    file: bitswarm_protocols::FileId,
) -> anyhow::Result<Vec<tracker::Provider>> {
    let Some(libp2p::multiaddr::Protocol::P2p(tracker_id)) = tracker.iter().last() else {
        anyhow::bail!("no /p2p in the tracker address {tracker}")
    };
    let behaviour = request_response::Behaviour::with_codec(
        tracker_codec(),
        [(TRACKER_PROTOCOL, ProtocolSupport::Outbound)],
        request_response::Config::default(),
    );
    let (mut swarm, _) = swarm("/ip4/127.0.0.1/tcp/0", behaviour)?;
    swarm.add_peer_address(tracker_id, tracker.clone());
    let key = tracker::LookupKey::Id(file);
    swarm
        .behaviour_mut()
        .send_request(&tracker_id, tracker::Request::Lookup { key, limit: 50 });
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                }) => {
                    let records = match response {
                        Ok(tracker::Reply::Providers(records)) => records,
                        other => anyhow::bail!("unexpected lookup answer {other:?}"),
                    };
                    return Ok(records
                        .into_iter()
                        .filter(|r| r.id == file)
                        .flat_map(|r| r.providers)
                        .collect());
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    error, ..
                }) => {
                    anyhow::bail!("lookup failed: {error}")
                }
                _ => {}
            }
        }
    })
    .await
    .context("no answer to the lookup")?
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM` in `/proc`), in bytes.
pub fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A process's user + system CPU seconds so far, all threads (`/proc/<pid>/stat`).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised name; utime and stime are the 14th and 15th in all.
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    let ticks: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    Ok((utime + stime) / ticks)
}

/// Open file descriptors of a process (its sockets among them).
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Peers that make themselves providers of a download by asking its downloader for the file,
/// claim every piece, and then never answer a request: each asks `target` for `file`'s
/// bitfield every 100 ms (so it joins as soon as the download knows the file), answers a
/// bitfield request with all `pieces` set, and keeps every other request open and silent.
/// Stopped when dropped.
pub struct Injectors {
    tasks: Vec<JoinHandle<()>>,
    asked: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PeerId>>>,
}

impl Injectors {
    /// Starts `peers` such peers on 127.0.0.1.
    pub fn start(
        target: &Multiaddr,
        file: bitswarm_protocols::FileId,
        pieces: u32,
        peers: usize,
    ) -> anyhow::Result<Self> {
        let Some(libp2p::multiaddr::Protocol::P2p(target_id)) = target.iter().last() else {
            anyhow::bail!("no /p2p in {target}")
        };
        let asked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let bitfield = vec![0xff_u8; pieces.div_ceil(8) as usize];
        let mut tasks = Vec::new();
        for _ in 0..peers {
            let behaviour = request_response::Behaviour::with_codec(
                TransferCodec::default(),
                [(TRANSFER_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(600)),
            );
            let (mut swarm, _) = swarm("/ip4/127.0.0.1/tcp/0", behaviour)?;
            swarm.add_peer_address(target_id, target.clone());
            let me = *swarm.local_peer_id();
            let asked = asked.clone();
            let bitfield = bitfield.clone();
            tasks.push(tokio::spawn(async move {
                let mut silent: Vec<ResponseChannel<transfer::Response>> = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let request = transfer::Request::Have { id: file };
                            swarm.behaviour_mut().send_request(&target_id, request);
                        }
                        event = swarm.select_next_some() => {
                            let SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Request { request, channel, .. },
                                ..
                            }) = event else {
                                continue;
                            };
                            if let Ok(mut asked) = asked.lock() {
                                asked.insert(me);
                            }
                            match request {
                                transfer::Request::Have { .. } => {
                                    let have = transfer::Response::Have(bitfield.clone());
                                    let _ = swarm.behaviour_mut().send_response(channel, have);
                                }
                                _ => silent.push(channel),
                            }
                        }
                    }
                }
            }));
        }
        Ok(Injectors { tasks, asked })
    }

    /// How many of these peers the target has sent a request to (took them as providers).
    pub fn admitted(&self) -> usize {
        self.asked.lock().map_or(0, |a| a.len())
    }
}

impl Drop for Injectors {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// TCP connections from one source address that never start the handshake: each is held open
/// until the target closes it, then opened again at once, so the attacker always holds as many
/// pending handshakes as the target lets it. Stopped when dropped.
pub struct SilentSockets {
    tasks: Vec<JoinHandle<()>>,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentSockets {
    /// Keeps `sockets` such connections to `target` (an `ip4/tcp` address) from `from_ip`.
    pub fn start(
        target: &Multiaddr,
        from_ip: std::net::Ipv4Addr,
        sockets: usize,
    ) -> anyhow::Result<Self> {
        let dst = socket_addr(target)?;
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = (0..sockets)
            .map(|_| {
                let opened = opened.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    loop {
                        let connected = async {
                            let socket = tokio::net::TcpSocket::new_v4()?;
                            socket.bind(std::net::SocketAddr::from((from_ip, 0)))?;
                            socket.connect(dst).await
                        };
                        if let Ok(mut stream) = connected.await {
                            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let mut buf = [0u8; 1024];
                            // Until the target gives up on us (EOF or reset).
                            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .collect();
        Ok(SilentSockets { tasks, opened })
    }

    /// Connections opened so far (each new one after the target closed the last).
    pub fn opened(&self) -> usize {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SilentSockets {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The socket address of an `ip4/tcp` multiaddr.
fn socket_addr(target: &Multiaddr) -> anyhow::Result<std::net::SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in target.iter() {
        match p {
            libp2p::multiaddr::Protocol::Ip4(a) => ip = Some(a),
            libp2p::multiaddr::Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Ok(std::net::SocketAddr::from((
        ip.context("no ip4")?,
        port.context("no tcp")?,
    )))
}

type RawMuxer = libp2p::yamux::Muxer<
    multistream_select::Negotiated<
        libp2p::noise::Output<multistream_select::Negotiated<FloodStream>>,
    >,
>;

/// A peer from a chosen source address (`127.0.0.x`, which a swarm's TCP dialer cannot pick),
/// with its own identity, speaking the tracker protocol by hand: Noise and yamux negotiated
/// over a socket bound to that address, each request a fresh stream (CBOR written, the write
/// side closed, the answer read to its end), as request-response does. Inbound streams (the
/// tracker's pings) are refused at negotiation, so the tracker keeps the connection.
pub struct RawPeer {
    /// Its peer id.
    pub peer: PeerId,
    muxer: RawMuxer,
    refusing: futures::stream::FuturesUnordered<futures::future::BoxFuture<'static, ()>>,
}

impl RawPeer {
    /// Connects to `target` (an `ip4/tcp` address) from `from_ip` as `key`.
    pub async fn connect(
        target: &Multiaddr,
        from_ip: std::net::Ipv4Addr,
        key: libp2p::identity::Keypair,
    ) -> anyhow::Result<Self> {
        use libp2p::core::upgrade::OutboundConnectionUpgrade;
        use multistream_select::{dialer_select_proto, Version};
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from((from_ip, 0)))?;
        let stream = socket.connect(socket_addr(target)?).await?;
        stream.set_nodelay(true)?;
        let (noise_id, io) = dialer_select_proto(stream.compat(), ["/noise"], Version::V1).await?;
        let (_, secure) = noise::Config::new(&key)?
            .upgrade_outbound(io, noise_id)
            .await?;
        let (yamux_id, io) = dialer_select_proto(secure, ["/yamux/1.0.0"], Version::V1).await?;
        let muxer = yamux::Config::default()
            .upgrade_outbound(io, yamux_id)
            .await?;
        Ok(RawPeer {
            peer: key.public().to_peer_id(),
            muxer,
            refusing: futures::stream::FuturesUnordered::new(),
        })
    }

    /// Drives the connection: its frames, and refusing inbound streams.
    fn drive(&mut self, cx: &mut std::task::Context<'_>) -> anyhow::Result<()> {
        use libp2p::core::muxing::StreamMuxerExt;
        use std::task::Poll;
        loop {
            match self.muxer.poll_unpin(cx) {
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => anyhow::bail!("connection failed: {e}"),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Ok(stream)) = self.muxer.poll_inbound_unpin(cx) {
            self.refusing.push(Box::pin(async move {
                let none: Vec<&'static str> = Vec::new();
                let _ = multistream_select::listener_select_proto(stream, none).await;
            }));
        }
        while let Poll::Ready(Some(())) = self.refusing.poll_next_unpin(cx) {}
        Ok(())
    }

    /// Opens a stream for `protocol`.
    async fn open(
        &mut self,
        protocol: libp2p::StreamProtocol,
    ) -> anyhow::Result<multistream_select::Negotiated<libp2p::yamux::Stream>> {
        use libp2p::core::muxing::StreamMuxerExt;
        let stream = futures::future::poll_fn(|cx| {
            if let Err(e) = self.drive(cx) {
                return std::task::Poll::Ready(Err(e));
            }
            self.muxer
                .poll_outbound_unpin(cx)
                .map_err(|e| anyhow::anyhow!("cannot open a stream: {e}"))
        })
        .await?;
        let negotiate = multistream_select::dialer_select_proto(
            stream,
            [protocol],
            multistream_select::Version::V1,
        );
        let (_, io) = self.run(negotiate).await??;
        Ok(io)
    }

    /// Runs `fut` while driving the connection.
    async fn run<F: std::future::Future>(&mut self, fut: F) -> anyhow::Result<F::Output> {
        let mut fut = std::pin::pin!(fut);
        futures::future::poll_fn(|cx| {
            if let Err(e) = self.drive(cx) {
                return std::task::Poll::Ready(Err(e));
            }
            fut.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Sends one tracker request and reads its answer.
    pub async fn tracker(
        &mut self,
        request: &tracker::Request,
    ) -> anyhow::Result<tracker::Response> {
        use futures::{AsyncReadExt, AsyncWriteExt};
        let mut io = self.open(TRACKER_PROTOCOL).await?;
        let bytes = cbor4ii::serde::to_vec(Vec::new(), request)?;
        let exchange = async move {
            io.write_all(&bytes).await?;
            io.close().await?;
            let mut answer = Vec::new();
            io.take(bitswarm_protocols::codec::MAX_TRACKER_RESPONSE)
                .read_to_end(&mut answer)
                .await?;
            anyhow::Ok(answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), self.run(exchange))
            .await
            .context("no answer within 10 s")???;
        Ok(cbor4ii::serde::from_slice(&answer)?)
    }

    /// Sends one tracker request and never reads the answer; the stream stays open.
    pub async fn tracker_unread(
        &mut self,
        request: &tracker::Request,
    ) -> anyhow::Result<multistream_select::Negotiated<libp2p::yamux::Stream>> {
        use futures::AsyncWriteExt;
        let mut io = self.open(TRACKER_PROTOCOL).await?;
        let bytes = cbor4ii::serde::to_vec(Vec::new(), request)?;
        let sent = async {
            io.write_all(&bytes).await?;
            io.close().await?;
            anyhow::Ok(())
        };
        self.run(sent).await??;
        Ok(io)
    }
}

/// A key whose peer id sorts before almost every other: its public key starts with a zero
/// byte (about one key in 256), as an attacker grinds them to come first in id order.
pub fn low_key() -> libp2p::identity::Keypair {
    loop {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let bytes = key.public().to_peer_id().to_bytes();
        // Identity multihash of a protobuf key: 6 bytes of framing, then the key.
        if bytes.get(6) == Some(&0) {
            return key;
        }
    }
}

#[derive(NetworkBehaviour)]
struct Reserver {
    relay: libp2p::relay::client::Behaviour,
    tracker: request_response::Behaviour<TrackerCodec>,
}

/// Whether a fresh peer gets a relay reservation at the tracker `tracker` (listening on
/// `circuit`, the tracker's address with `/p2p-circuit`); with `register`, it announces itself
/// first.
pub async fn reserve(
    tracker: &Multiaddr,
    circuit: &Multiaddr,
    register: bool,
) -> anyhow::Result<bool> {
    let Some(libp2p::multiaddr::Protocol::P2p(tracker_id)) = tracker.iter().last() else {
        anyhow::bail!("no /p2p in the tracker address {tracker}")
    };
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_, relay| Reserver {
            relay,
            tracker: request_response::Behaviour::with_codec(
                tracker_codec(),
                [(TRACKER_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default(),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.add_peer_address(tracker_id, tracker.clone());
    if register {
        let announce = tracker::Announce {
            files: Vec::new(),
            addrs: Vec::new(),
        };
        swarm
            .behaviour_mut()
            .tracker
            .send_request(&tracker_id, tracker::Request::Announce(announce));
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let SwarmEvent::Behaviour(ReserverEvent::Tracker(
                    request_response::Event::Message {
                        message: request_response::Message::Response { .. },
                        ..
                    },
                )) = swarm.select_next_some().await
                {
                    return;
                }
            }
        })
        .await
        .context("no answer to the announce")?;
    }
    swarm.listen_on(circuit.clone())?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(ReserverEvent::Relay(
                    libp2p::relay::client::Event::ReservationReqAccepted { .. },
                )) => return Ok(true),
                SwarmEvent::ListenerClosed { .. } | SwarmEvent::ListenerError { .. } => {
                    return Ok(false)
                }
                _ => {}
            }
        }
    })
    .await
    .context("neither a reservation nor a refusal within 10 s")?
}

/// A request for a [`RawHandle`]'s peer and where its answer goes.
type RawJob = (
    tracker::Request,
    tokio::sync::oneshot::Sender<anyhow::Result<tracker::Response>>,
);

/// A [`RawPeer`] driven by a task of its own, so its connection stays alive (pings refused
/// promptly) between requests. Dropping the handle ends the task and the connection.
#[derive(Clone)]
pub struct RawHandle {
    /// Its peer id.
    pub peer: PeerId,
    jobs: tokio::sync::mpsc::Sender<RawJob>,
}

impl RawPeer {
    /// Moves the peer onto a task of its own.
    pub fn spawn(mut self) -> RawHandle {
        let (jobs, mut rx) = tokio::sync::mpsc::channel::<RawJob>(4);
        let peer = self.peer;
        tokio::spawn(async move {
            loop {
                let next = futures::future::poll_fn(|cx| {
                    if let Err(e) = self.drive(cx) {
                        return std::task::Poll::Ready(Err(e));
                    }
                    rx.poll_recv(cx).map(Ok)
                })
                .await;
                let Ok(Some((request, reply))) = next else {
                    break;
                };
                let _ = reply.send(self.tracker(&request).await);
            }
        });
        RawHandle { peer, jobs }
    }
}

impl RawHandle {
    /// Sends one tracker request and reads its answer.
    pub async fn tracker(&self, request: tracker::Request) -> anyhow::Result<tracker::Response> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send((request, tx))
            .await
            .map_err(|_| anyhow::anyhow!("the connection is gone"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the connection is gone"))?
    }
}
