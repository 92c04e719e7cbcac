//! Every way reading keys or a signed manifest can fail, with a message that
//! names what was wrong (shown on the console by stage 1 before it halts).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("signed manifest too short: {0} bytes, need at least {1}")]
    Truncated(usize, usize),
    #[error("bad magic: not a gwos signed manifest (expected GWOSMAN1)")]
    BadMagic,
    #[error("manifest length {0} exceeds limit {1}")]
    Oversize(usize, usize),
    #[error("trailing non-zero bytes after the signed manifest")]
    TrailingGarbage,
    #[error("manifest signed by unknown key id {0}")]
    UnknownKey(String),
    #[error("manifest signature does not verify with release key {0}")]
    BadSignature(String),
    #[error("manifest JSON invalid: {0}")]
    Json(String),
    #[error("manifest is not in canonical form")]
    NotCanonical,
    #[error("manifest field invalid: {0}")]
    Field(String),
    #[error("key: {0}")]
    Key(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}
