//! Error numbers as the kernel's bpf() returns them.

use std::fmt;

/// A positive errno value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    /// The kernel-internal ENOTSUPP (524) that some bpf() paths leak to user space.
    pub const ENOTSUPP: Errno = Errno(524);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);

    /// The value a helper returns for this error (`-errno`).
    pub fn as_helper_result(self) -> u64 {
        (-(self.0 as i64)) as u64
    }

    /// The symbolic name.
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::E2BIG => "E2BIG",
            libc::EBADF => "EBADF",
            libc::ENOMEM => "ENOMEM",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EINVAL => "EINVAL",
            libc::ENOSPC => "ENOSPC",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EAGAIN => "EAGAIN",
            524 => "ENOTSUPP",
            _ => "E?",
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}
