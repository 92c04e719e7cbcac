//! Release keys, the slot manifest and its ed25519 signature: written by the host tool `gwos`, checked by stage 1 of init and by the updater.
//!
//! Data flow: `gwos build` fills a [`Manifest`] for slot A (root hash, salt,
//! sizes, UKI hash), signs its canonical JSON bytes with the release key and
//! wraps them in an envelope ([`envelope`], magic `GWOSMAN1`) that lives in
//! the last [`MANIFEST_REGION_SIZE`] bytes of the slot's verity partition.
//! Stage 1 of init reads that region, calls [`open`] with the release public
//! keys built into the initramfs, and only then trusts the root hash.
//! Private keys never enter an image; this crate only reads them on the host.
//!
//! Stage 1 in short: `keys = load_dir("/etc/gwos/release-keys")`; read the
//! last [`MANIFEST_REGION_SIZE`] bytes of the partition labelled
//! `verity-<slot>`; `m = open(&region, &keys)?`; require
//! `m.root_hash == gwos.roothash=` from the command line; load
//! [`Manifest::dm_verity_table`] for `root-<slot>`/`verity-<slot>`.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod envelope;
pub mod error;
pub mod keys;
pub mod manifest;

pub use bundle::{BundleError, Slot};
pub use envelope::{open, seal, SignedManifest, ENVELOPE_HEADER_LEN, MAGIC, MAX_MANIFEST_LEN};
pub use error::Error;
pub use keys::{key_id, load_dir, KeyId, PublicKey, ReleaseKey};
pub use manifest::Manifest;

/// Size of the region at the end of each verity partition that holds the
/// signed manifest envelope (zero padded). Stage 1 reads exactly this much
/// from `partition_size - MANIFEST_REGION_SIZE`.
pub const MANIFEST_REGION_SIZE: u64 = 64 * 1024;
