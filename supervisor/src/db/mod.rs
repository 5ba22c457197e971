//! Database handles the parts above share: the embedded sled database.

mod sled;

pub use self::sled::SledDb;
