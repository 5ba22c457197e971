//! Everything the supervisor and the sandbox agree on: the guest world's types, the IPC protocol
//! and its framing, the typed execution outcome, limits and capabilities.

pub mod bindings;
pub mod capability;
pub mod channel;
pub mod frame;
pub mod limits;
pub mod outcome;
pub mod protocol;
pub mod syscalls;
