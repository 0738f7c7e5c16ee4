//! A minimal MQTT 3.1.1 client over TCP for the in-process benchmarks (`persist_bench`,
//! `reload_bench`), included with `#[path = "common/client.rs"] mod client;`. Not a general
//! client: it panics on anything unexpected, which in a benchmark is the right answer.
//! (`loadgen` keeps its own, cheaper one: it measures other brokers over the network.)

// Each example uses a part of this module.
#![allow(dead_code)]

use bytes::{Buf, BytesMut};
use mqtt_broker::protocol::codec::peek_header;
use mqtt_broker::protocol::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Client {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Client {
    /// TCP connect and CONNECT with a 60 s keep-alive; panics unless the CONNACK accepts.
    pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Client {
        Client::connect_with(addr, id, clean, 60).await
    }

    /// Like [`Client::connect`] with the given keep-alive (0: the broker never closes the
    /// connection for silence, unless `server.keep_alive_timeout` says otherwise).
    pub async fn connect_with(addr: SocketAddr, id: &str, clean: bool, keep_alive: u16) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Client {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        c.send(&Packet::Connect(Box::new(Connect {
            bridge: false,
            properties: None,
            protocol: ProtocolLevel::V311,
            clean_session: clean,
            keep_alive,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })))
        .await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Accepted => c,
            other => panic!("connect failed: {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next packet, fully decoded; `None` when the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, usize::MAX).expect("valid packet") {
                return Some(p);
            }
            if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// SUBSCRIBE to one filter and return the SUBACK's code.
    pub async fn subscribe(&mut self, pid: u16, filter: &str, qos: QoS) -> SubAckCode {
        self.send(&Packet::Subscribe(Subscribe {
            options: Vec::new(),
            properties: None,
            pid,
            filters: vec![(filter.into(), qos)],
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(s)) if s.pid == pid && s.codes.len() == 1 => s.codes[0],
            other => panic!("expected SUBACK {pid}, got {other:?}"),
        }
    }

    /// Reads whatever arrives next into the buffer; `false` when the connection closed.
    pub async fn read_more(&mut self) -> bool {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        matches!(self.stream.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    /// Frames the complete packets in the buffer without decoding them (the throughput
    /// path), hands each one's first byte and body to `f`, and removes them.
    pub fn for_each_frame(&mut self, mut f: impl FnMut(u8, &[u8])) {
        let mut used = 0;
        while let Some(h) = peek_header(&self.buf[used..]).expect("valid header") {
            let Some(body) = self.buf.get(used + h.header_len..used + h.total_len()) else {
                break;
            };
            f(h.first_byte, body);
            used += h.total_len();
        }
        self.buf.advance(used);
    }
}

/// The packet identifier of a QoS 1/2 PUBLISH body (after the topic).
pub fn publish_pid(body: &[u8]) -> u16 {
    let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
    u16::from_be_bytes([body[2 + topic_len], body[3 + topic_len]])
}

/// Raises the open-file limit to at least `need` (soft and, when allowed, hard limit).
/// Returns the limit in force, or why it could not be raised.
pub fn raise_nofile(need: u64) -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        if lim.rlim_cur >= need {
            return Ok(lim.rlim_cur);
        }
        let want = need.max(65_536);
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(want);
        }
        // Not privileged to raise the hard limit: take what it allows.
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur >= need {
            return Ok(lim.rlim_cur);
        }
    }
    Err(format!(
        "the open-file limit is {} and this process may not raise it to {need}",
        lim.rlim_cur
    ))
}
