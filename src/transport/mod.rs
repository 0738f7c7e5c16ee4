//! Listeners and the byte streams they produce.
//!
//! Every transport ends in an `AsyncRead + AsyncWrite` stream handed to
//! [`crate::connection::serve`], so sessions and routing never know how a client arrived.

mod tcp;

pub(crate) use tcp::{accept_loop, bind};
