//! Hostile input: a raw client writes oversized and malformed messages on the tracker and
//! transfer protocols. Each is refused (no answer), and the tracker and the peer keep serving
//! everyone else.

use std::{io, time::Duration};

use bitswarm_protocols::{
    tracker, tracker::LookupKey, transfer, FileName, TRACKER_PROTOCOL, TRANSFER_PROTOCOL,
};
use bitswarm_tests::{init_tracing, make_file, TestNode, TestTracker, TEST_TIMEOUT};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    noise, request_response, request_response::ProtocolSupport, swarm::SwarmEvent, tcp, yamux,
    Multiaddr, StreamProtocol, SwarmBuilder,
};

/// Writes the request bytes as they are and reads whatever comes back (at most 1 MiB).
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("client only"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Err(io::Error::other("client only"))
    }
}

/// Sends `bytes` to the node at `addr` (which ends in `/p2p/<id>`) on `protocol`; returns the
/// answer's bytes, or the failure as text.
async fn raw_request(
    addr: &Multiaddr,
    protocol: StreamProtocol,
    bytes: Vec<u8>,
) -> anyhow::Result<Result<Vec<u8>, String>> {
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
        anyhow::bail!("no /p2p in {addr}")
    };
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(protocol, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            )
        })?
        .build();
    swarm.add_peer_address(peer, addr.clone());
    let id = swarm.behaviour_mut().send_request(&peer, bytes);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) if request_id == id => return Ok(Ok(response)),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) if request_id == id => return Ok(Err(error.to_string())),
            _ => {}
        }
    }
}

fn refused(answer: &Result<Vec<u8>, String>) -> bool {
    !matches!(answer, Ok(bytes) if !bytes.is_empty())
}

fn cbor<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    Ok(cbor4ii::serde::to_vec(Vec::new(), value)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_messages_are_refused_and_everyone_else_is_still_served(
) -> anyhow::Result<()> {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir()?;
        let tracker = TestTracker::start().await?;
        let seeder = TestNode::start("seeder", &tracker.addr).await?;
        let path = make_file(dir.path(), "f.bin", 1_500_000, 3)?;
        let shared = seeder.client.share(&path).await?;
        let seeder_addr = seeder.client.listen_addrs().await?[0]
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(seeder.client.peer_id()));

        // Control: the raw client gets real answers to well-formed requests.
        let ok = raw_request(
            &tracker.addr,
            TRACKER_PROTOCOL,
            cbor(&tracker::Request::Stats)?,
        )
        .await?;
        assert!(!refused(&ok), "a valid stats request is answered: {ok:?}");
        let ok = raw_request(
            &seeder_addr,
            TRANSFER_PROTOCOL,
            cbor(&transfer::Request::Piece {
                id: shared.id,
                index: 0,
                expect: 0,
            })?,
        )
        .await?;
        assert!(
            matches!(&ok, Ok(b) if b.len() > 1_000_000),
            "a valid piece request is answered"
        );

        let oversized_tracker =
            vec![0x41; bitswarm_protocols::codec::MAX_TRACKER_REQUEST as usize + 1024];
        let oversized_transfer =
            vec![0x41; bitswarm_protocols::codec::MAX_TRANSFER_REQUEST as usize + 1];
        let malformed = b"\xff\xfe\x00garbage that is not CBOR".to_vec();
        for (what, addr, protocol, bytes) in [
            (
                "oversized to tracker",
                &tracker.addr,
                TRACKER_PROTOCOL,
                oversized_tracker,
            ),
            (
                "malformed to tracker",
                &tracker.addr,
                TRACKER_PROTOCOL,
                malformed.clone(),
            ),
            (
                "oversized to peer",
                &seeder_addr,
                TRANSFER_PROTOCOL,
                oversized_transfer,
            ),
            (
                "malformed to peer",
                &seeder_addr,
                TRANSFER_PROTOCOL,
                malformed,
            ),
        ] {
            let answer = raw_request(addr, protocol, bytes).await?;
            assert!(refused(&answer), "{what} was answered: {answer:?}");
        }
        // A piece index past the end is a clean wire error, not a crash.
        let answer = raw_request(
            &seeder_addr,
            TRANSFER_PROTOCOL,
            cbor(&transfer::Request::Piece {
                id: shared.id,
                index: u32::MAX,
                expect: 0,
            })?,
        )
        .await?;
        assert!(
            matches!(&answer, Ok(b) if b.len() < 16),
            "out-of-range index gets a short error: {answer:?}"
        );

        // Both keep serving others.
        let leecher = TestNode::start("leecher", &tracker.addr).await?;
        assert_eq!(leecher.client.stats().await?.files, 1);
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out)?;
        let done = leecher
            .client
            .get(LookupKey::Name(FileName::new("f.bin")?), &out)
            .await?
            .wait()
            .await?;
        assert_eq!(std::fs::read(done.path)?, std::fs::read(&path)?);
        leecher.stop().await?;
        seeder.stop().await?;
        tracker.stop().await
    })
    .await?
}
