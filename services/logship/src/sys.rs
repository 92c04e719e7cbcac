//! The one syscall std and nix do not wrap: `getsockopt(TCP_INFO)`, for the
//! number of bytes the peer's TCP has acknowledged (`tcpi_bytes_acked`).

use std::os::fd::AsRawFd;

/// Bytes of this connection's payload the peer has acknowledged.
pub(crate) fn bytes_acked(sock: &impl AsRawFd) -> std::io::Result<u64> {
    // SAFETY: all-zero bytes are a valid tcp_info (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a live tcp_info of `len` bytes; the kernel writes at
    // most `len` bytes and updates `len`; the fd is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked)
}
