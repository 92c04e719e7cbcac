//! Booting gwos images under QEMU: the one launcher in the tree, used by
//! `gwos run` / `gwos stop` ([`cli`]) and by the QEMU test suite
//! (`qemu-tests/`).
//!
//! A guest is described as a [`Spec`] (firmware or direct kernel, disks and
//! their controllers, NICs and their networks, console, monitor) whose
//! [`Spec::args`] is the only QEMU command line in the repository; [`Vm`]
//! runs it and reads the console; [`ready`] tells the ready line from the
//! ways a boot can fail, each with its exit code.

pub mod cli;
pub mod direct;
pub mod ready;
pub mod spec;
pub mod vm;

pub use ready::{Failure, Ready};
pub use spec::{
    default_forwards, detect_accel, Accel, Console, Disk, DiskFormat, DiskModel, Firmware, Forward,
    NetBackend, Nic, Proto, Spec,
};
pub use vm::{Stdio3, Vm};
