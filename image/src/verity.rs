//! The dm-verity hash tree lives in [`gwos_core::verity`] (the image builder
//! and the on-device update writer both build it); re-exported here.

pub use gwos_core::verity::*;
