//! The data plane: passive leases (`pool`) and the listeners on their ports (`ports`), the
//! bridge that runs one transfer (`bridge`), what a session hands a bridge when it starts one
//! (`params`), the address and TLS checks a data connection must pass (`admit`), the copy
//! itself (`pump`), and the reply each failure gets (`error`).

mod admit;
mod bridge;
mod error;
mod params;
mod pool;
mod ports;
mod pump;

pub(crate) use bridge::{BackendSide, ClientSide, DataBridge, Received, Transferred};
pub(crate) use error::BridgeError;
pub(crate) use params::BridgeParams;
pub(crate) use pool::{PassivePool, PoolError};
pub(crate) use ports::{bind_addresses, start as start_ports, NoPassivePort, PortSettings};
