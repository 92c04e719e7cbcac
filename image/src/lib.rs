//! The host tool `gwos`: builds the rootfs, EROFS, dm-verity tree, signed manifest, initramfs, UKIs and the GPT A/B disk; boots images in QEMU; client helpers (knock, connect, ctl).
//!
//! Build flow (`gwos build`, [`build::build`]): image.toml ([`config`]) →
//! staging tree ([`rootfs`]) → EROFS ([`erofs`]) → dm-verity tree
//! ([`verity`]) → initramfs ([`cpio`]) → UKI ([`uki`]) → signed manifest
//! (`gwos-signing`) → ESP ([`esp`]) → GPT disk ([`gpt`]) → qcow2 + build
//! report ([`report`]). `gwos verify` ([`verify`]) checks an image the way
//! stage 1 of init will, plus the UKI hash.

#![forbid(unsafe_code)]

pub mod bmap;
pub mod build;
pub mod bundle;
pub mod config;
pub mod cpio;
pub mod erofs;
pub mod esp;
pub mod gpt;
pub mod inspect;
pub mod keys;
pub mod report;
pub mod rootfs;
pub mod run;
pub mod statefs;
pub mod tools;
pub mod uki;
pub mod verify;
pub mod verity;
