//! Database handles the parts above share: the embedded sled database (one host) and the
//! PostgreSQL pool (several hosts).

pub mod postgres;
mod sled;

pub use self::sled::SledDb;
