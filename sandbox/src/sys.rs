//! Thin wrappers over the system calls the sandbox needs that neither `nix` nor `std` offer.
//! Every `unsafe` block lives here and says why it is sound.

/// 32 bytes from the kernel's CSPRNG (`getrandom(2)`), read in the calling process.
pub fn random_seed() -> [u8; 32] {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own
        // mutably; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // getrandom cannot fail on a kernel that has it (>= 3.17) once the pool is
            // initialised; a seed that is not random must never be used.
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    buf
}
