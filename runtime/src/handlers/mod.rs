//! What runs each job type on this node, and how it changes while the node
//! runs.
//!
//! - [`admission`]: the one check a component passes first (publish, pin,
//!   directory), with a typed refusal;
//! - [`table`]: job type → handler (a component, or native code of the
//!   node), shared and swapped in place; pins resolved per job;
//! - [`fleet`]: the handlers published to the fleet, followed live;
//! - [`dir`]: the watched directory of components (`components.dir`).

pub mod admission;
pub mod dir;
pub mod fleet;
pub mod table;

pub use table::{Handler, HandlerLoadError, HandlerTable, NativeHandler, NativeJob, PinResolver};
