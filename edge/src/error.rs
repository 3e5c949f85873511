//! The edge answers with the public API's errors (`intake::Error`): one enum,
//! and one mapping to statuses, codes and bodies, for every door that speaks
//! the public API.

pub use intake::{Detail, Door, Error as EdgeError};
