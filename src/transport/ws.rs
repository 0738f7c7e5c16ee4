//! MQTT over WebSocket (section 6 of the specification): the HTTP upgrade with path check and
//! subprotocol selection, and an adapter that turns binary WebSocket messages back into the
//! byte stream the connection task reads.

use super::TransportError;
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Subprotocols a client may ask for; `mqtt` is the registered one, `mqttv3.1` older clients'.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the server side of the WebSocket upgrade on `path`.
///
/// A request for another path is answered 404 before any upgrade.
pub async fn accept<S>(
    stream: S,
    path: &str,
    max_message_size: usize,
) -> Result<WsByteStream<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The callback signature is fixed by tungstenite.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut err =
                ErrorResponse::new(Some(format!("no MQTT endpoint at {}\n", req.uri().path())));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| SUBPROTOCOLS.contains(p));
        if let Some(p) = offered {
            if let Ok(v) = HeaderValue::from_str(p) {
                resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
            }
        }
        Ok(resp)
    };
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message_size);
    config.max_frame_size = Some(max_message_size);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(|e| TransportError::Handshake(format!("websocket upgrade failed: {e}")))?;
    Ok(WsByteStream::new(ws))
}

/// A WebSocket carrying MQTT as a plain byte stream: binary messages in, binary messages out.
///
/// MQTT packets may span messages and a message may carry several packets, so reads simply
/// concatenate payloads. A text message is a protocol violation [MQTT-6.0.0-1] and ends the
/// stream with an error. Pings are answered by tungstenite on the next read or flush.
pub struct WsByteStream<S> {
    inner: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsByteStream<S> {
    /// Wraps an upgraded WebSocket (server or client side).
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsByteStream {
            inner,
            pending: Bytes::new(),
        }
    }
}

pub use crate::model::WsViolation;

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    match e {
        Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => io::Error::new(
            io::ErrorKind::InvalidData,
            WsViolation::TooLarge {
                size,
                max: max_size,
            },
        ),
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        WsViolation::TextFrame,
                    )))
                }
                Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                // Ping, pong and raw frames carry no MQTT bytes.
                Some(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        // Push the frame towards the socket now; the connection task batches its writes.
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(to_io(e))),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(to_io)
    }
}
