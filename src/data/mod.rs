//! The data plane: passive port leases and the bridges that splice client data connections to
//! the backend's.

mod bridge;
mod pool;

pub use bridge::{BridgeError, BridgeParams, DataBridge, Transferred};
pub use pool::{Lease, PassivePool, PoolError};
