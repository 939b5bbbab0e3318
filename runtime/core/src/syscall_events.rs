//! System call tracepoints in userspace (and the process events calls cause: see
//! [`crate::process_events`]): which events a `tracepoint/syscalls/...` or
//! `raw_tracepoint/sys_enter|sys_exit` program names, and the context records the kernel gives
//! them (the `syscalls:sys_enter_NAME` / `sys_exit_NAME` formats: an 8-byte common header, the
//! call number at 8, then the six arguments at 16 or the result at 16; for raw tracepoints
//! `{ struct pt_regs *regs; long id_or_ret; }`).

use crate::syscall_table;

/// Where a system call program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyscallEvent {
    /// `tracepoint/syscalls/sys_enter_NAME`: before call `nr`.
    Enter(u32),
    /// `tracepoint/syscalls/sys_exit_NAME`: after call `nr`.
    Exit(u32),
    /// `raw_tracepoint/sys_enter`: before every call.
    RawEnter,
    /// `raw_tracepoint/sys_exit`: after every call.
    RawExit,
    /// `tracepoint/raw_syscalls/sys_enter`: before every call, a `sys_enter` record (the
    /// call number at 8, the arguments at 16).
    AnyEnter,
    /// `tracepoint/raw_syscalls/sys_exit`: after every call, a `sys_exit` record.
    AnyExit,
    /// `tracepoint/sched/sched_process_*`: what the process's calls cause (see
    /// [`crate::process_events`]).
    Process(ProcessEvent),
}

/// The process lifecycle and signal events the system calls of a process cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessEvent {
    /// `sched_process_exec`: a new image started (run as the image starts with the agent).
    Exec,
    /// `sched_process_exit`: a thread exits (`exit`, or each thread at `exit_group`).
    Exit,
    /// `sched_process_fork`: a thread made a process or a thread (run in the caller as the
    /// call returns).
    Fork,
    /// `sched_process_wait`: a thread starts waiting for a child (`wait4`, `waitid`).
    Wait,
    /// `signal_generate`: a signal sent (run in the sender before its `kill`, `tkill`,
    /// `tgkill` or `rt_(tg)sigqueueinfo` is made, when it will succeed; and for the `SIGCHLD`
    /// a process's end sends its parent).
    SignalGenerate,
    /// `signal_deliver`: a signal about to run the application's handler (in the receiver).
    SignalDeliver,
}

impl SyscallEvent {
    /// The event of a link target (`syscalls/sys_enter_openat`, `raw/sys_exit`, ...).
    pub fn parse(target: &str) -> Result<SyscallEvent, String> {
        match target {
            "raw/sys_enter" => return Ok(SyscallEvent::RawEnter),
            "raw/sys_exit" => return Ok(SyscallEvent::RawExit),
            "raw_syscalls/sys_enter" => return Ok(SyscallEvent::AnyEnter),
            "raw_syscalls/sys_exit" => return Ok(SyscallEvent::AnyExit),
            "sched/sched_process_exec" => return Ok(SyscallEvent::Process(ProcessEvent::Exec)),
            "sched/sched_process_exit" => return Ok(SyscallEvent::Process(ProcessEvent::Exit)),
            "sched/sched_process_fork" => return Ok(SyscallEvent::Process(ProcessEvent::Fork)),
            "sched/sched_process_wait" => return Ok(SyscallEvent::Process(ProcessEvent::Wait)),
            "signal/signal_generate" => return Ok(SyscallEvent::Process(ProcessEvent::SignalGenerate)),
            "signal/signal_deliver" => return Ok(SyscallEvent::Process(ProcessEvent::SignalDeliver)),
            _ => {}
        }
        let name = target.strip_prefix("syscalls/").ok_or_else(|| format!("`{target}` is not a system call event"))?;
        let (exit, call) = match (name.strip_prefix("sys_enter_"), name.strip_prefix("sys_exit_")) {
            (Some(c), _) => (false, c),
            (_, Some(c)) => (true, c),
            _ => return Err(format!("`{name}`: system call events are sys_enter_NAME and sys_exit_NAME")),
        };
        let nr = syscall_table::number(call).ok_or_else(|| format!("`{call}` is not an x86-64 system call"))?;
        Ok(if exit { SyscallEvent::Exit(nr) } else { SyscallEvent::Enter(nr) })
    }

    /// The link target of a program section's event, if it is one we run.
    pub fn target_of(kind: &bpftime_object::ProgramKind) -> Option<Result<String, String>> {
        use bpftime_object::ProgramKind;
        let target = match kind {
            ProgramKind::Tracepoint { category, name } if category == "syscalls" || category == "raw_syscalls" => format!("{category}/{name}"),
            ProgramKind::Tracepoint { category, name } if crate::process_events::is_process_event(&format!("{category}/{name}")) => {
                format!("{category}/{name}")
            }
            ProgramKind::RawTracepoint { name } if name == "sys_enter" || name == "sys_exit" => format!("raw/{name}"),
            _ => return None,
        };
        Some(SyscallEvent::parse(&target).map(|_| target))
    }
}

/// The `common_type` of an event (`syscalls/sys_enter_openat`): its id under tracefs when
/// mounted, else 0.
pub fn event_id(event: &str) -> u16 {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/events/{event}/id")).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes of a `sys_enter_NAME` record.
pub const ENTER_RECORD: usize = 64;
/// Bytes of a `sys_exit_NAME` record.
pub const EXIT_RECORD: usize = 24;

fn header(out: &mut [u8], id: u16, tid: u32, nr: u32) {
    out[0..2].copy_from_slice(&id.to_le_bytes());
    out[4..8].copy_from_slice(&tid.to_le_bytes());
    // `int __syscall_nr` for the `syscalls` events, `long id` for `raw_syscalls`: sign-extended
    // (an `rt_sigreturn`'s exit is number -1).
    out[8..16].copy_from_slice(&(nr as i32 as i64).to_le_bytes());
}

/// The record a `sys_enter_NAME` program reads: call `nr` with `args`, by thread `tid`.
pub fn enter_record(id: u16, tid: u32, nr: u32, args: [u64; 6]) -> [u8; ENTER_RECORD] {
    let mut r = [0u8; ENTER_RECORD];
    header(&mut r, id, tid, nr);
    for (i, a) in args.iter().enumerate() {
        r[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    r
}

/// The record a `sys_exit_NAME` program reads: call `nr` returned `ret`.
pub fn exit_record(id: u16, tid: u32, nr: u32, ret: i64) -> [u8; EXIT_RECORD] {
    let mut r = [0u8; EXIT_RECORD];
    header(&mut r, id, tid, nr);
    r[16..24].copy_from_slice(&ret.to_le_bytes());
    r
}

/// The arguments a raw `sys_enter`/`sys_exit` program reads: the `pt_regs` address and the
/// call number (enter) or result (exit).
pub fn raw_record(regs: u64, second: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&regs.to_le_bytes());
    r[8..].copy_from_slice(&second.to_le_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_records() {
        assert_eq!(SyscallEvent::parse("syscalls/sys_enter_openat"), Ok(SyscallEvent::Enter(257)));
        assert_eq!(SyscallEvent::parse("syscalls/sys_exit_getpid"), Ok(SyscallEvent::Exit(39)));
        assert_eq!(SyscallEvent::parse("raw/sys_exit"), Ok(SyscallEvent::RawExit));
        assert_eq!(SyscallEvent::parse("raw_syscalls/sys_enter"), Ok(SyscallEvent::AnyEnter));
        assert_eq!(SyscallEvent::parse("sched/sched_process_exit"), Ok(SyscallEvent::Process(ProcessEvent::Exit)));
        assert!(SyscallEvent::parse("syscalls/sys_enter_nope").unwrap_err().contains("not an x86-64 system call"));
        let r = enter_record(7, 42, 257, [1, 2, 3, 4, 5, 6]);
        assert_eq!((&r[0..2], &r[4..8], &r[8..12]), (&7u16.to_le_bytes()[..], &42u32.to_le_bytes()[..], &257u32.to_le_bytes()[..]));
        assert_eq!(&r[24..32], &2u64.to_le_bytes());
        assert_eq!(&exit_record(0, 1, 257, -2)[16..24], &(-2i64).to_le_bytes());
    }
}
