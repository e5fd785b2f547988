//! The pure FTP protocol layer: no sockets, no clocks, so every function here can be fuzzed and
//! unit-tested in isolation. The session module does the I/O around it.

pub(crate) mod abort;
pub mod addr;
mod args;
mod command;
mod escape;
mod feat;
mod line;
mod reply;

pub use args::{parse_pbsz, AuthMechanism, ProtLevel};
pub use command::{Command, CommandError, Direction, Line, Request};
pub use escape::{escaped, Escaped};
pub use feat::{gateway_feat, rewrite_feat};
pub use line::{strip_telnet, LineError, LineFramer, Peer};
pub use reply::{Reply, ReplyAssembler, ReplyError};
