//! The data plane: passive port leases (`pool`), the bridge that runs one transfer (`bridge`),
//! what a session hands a bridge when it starts one (`params`), the address and TLS checks a
//! data connection must pass (`admit`), the copy itself (`pump`), and the reply each failure
//! gets (`error`).

mod admit;
mod bridge;
mod error;
mod params;
mod pool;
mod pump;

pub(crate) use bridge::{BackendSide, ClientSide, DataBridge, Transferred};
pub(crate) use error::BridgeError;
pub(crate) use params::BridgeParams;
pub(crate) use pool::{PassivePool, PoolError};
