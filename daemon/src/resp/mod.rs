//! The Redis protocol (RESP2 and RESP3) beside HTTP: `oncelyd serve --resp-listen`.
//!
//! The same authority as HTTP, through the same core (`server::authority`): one
//! tracker, the same namespaces, tokens (`AUTH`, `HELLO ... AUTH`), admission
//! (`max_concurrency`, shared), limits, connection cap, timeouts, metrics (with
//! `protocol="resp"`) and drain. What a face adds is only its framing and its
//! words:
//!
//! * [`parse`]: request framing, with limits on bulk length, argument count,
//!   inline size and the whole frame;
//! * [`reply`]: answers in RESP2 or RESP3;
//! * [`command`]: the command table and what each command means;
//! * [`handshake`]: the connection commands clients send (`HELLO`, `AUTH`,
//!   `CLIENT`, `COMMAND`, `INFO`, ...);
//! * [`conn`]: accepting and serving connections, where pipelining becomes
//!   batching: every mark already read from a connection's buffer goes to the
//!   tracker with its neighbours as one call, one write, answered in order.

pub(crate) mod command;
pub(crate) mod conn;
pub(crate) mod handshake;
pub mod parse;
pub(crate) mod reply;

pub use handshake::REDIS_VERSION;
