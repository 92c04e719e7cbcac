//! Boots built images in QEMU (TCG) and drives them from the host like a user would.
