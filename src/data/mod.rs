//! The data plane: passive port leases and the bridges that splice client data connections to
//! the backend's.

mod bridge;
mod gate;
mod pool;

pub use bridge::{
    canonical, BackendSide, BridgeError, BridgeParams, ClientSide, DataBridge, Transferred,
};
pub use gate::TicketGate;
pub use pool::{Lease, PassivePool, PoolError};
