//! Everything the supervisor and the sandbox agree on: the guest world's types, the IPC protocol
//! and its framing, the typed execution outcome, limits, capabilities and the egress policy; and the bundle format:
//! manifest v2, archive reading and packing, signatures and the trust bundle.

pub mod bindings;
pub mod budget;
pub mod bundle;
pub mod capability;
pub mod channel;
pub mod egress;
pub mod frame;
pub mod limits;
pub mod manifest;
pub mod outcome;
pub mod protocol;
pub mod signing;
pub mod syscalls;
