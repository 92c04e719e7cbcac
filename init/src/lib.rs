//! PID 1 of the gateway (`gwosd`): stage 1 in the initramfs verifies the slot and mounts the dm-verity root; stage 2 in the real root mounts, hardens, firewalls and supervises every service.
