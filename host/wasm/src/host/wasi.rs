//! The WASI subset plugins need (`wasi_snapshot_preview1`), and ENOSYS for the rest.

use super::*;

/// WASI errno values.
const WASI_ESUCCESS: i32 = 0;

const WASI_EBADF: i32 = 8;

const WASI_EINVAL: i32 = 28;

const WASI_ENOSYS: i32 = 52;

const WASI_EFAULT: i32 = 21;

const WASI_EIO: i32 = 29;

/// Most iovecs one `fd_write` may pass (POSIX's usual `IOV_MAX`); more is `EINVAL`.
const MAX_IOVS: i32 = 1024;

/// Splits what a plugin writes to stdout/stderr into log lines, holding at most one line of
/// `max_line` bytes and looking at no more than `max_total` bytes in all.
struct LineSplitter {
    max_line: usize,
    budget: usize,
    line: Vec<u8>,
    line_dropped: usize,
    lines: Vec<String>,
    dropped: usize,
}
impl LineSplitter {
    fn new(max_line: usize, max_total: usize) -> LineSplitter {
        LineSplitter {
            max_line,
            budget: max_total,
            line: Vec::new(),
            line_dropped: 0,
            lines: Vec::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(self.budget);
        self.budget -= take;
        self.dropped += bytes.len() - take;
        for (i, part) in bytes[..take].split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                self.end_line();
            }
            let room = self.max_line.saturating_sub(self.line.len());
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.line_dropped += part.len() - keep;
        }
    }

    fn end_line(&mut self) {
        if !self.line.is_empty() || self.line_dropped > 0 {
            let text = String::from_utf8_lossy(&self.line);
            self.lines
                .push(truncate_line(&text, self.max_line, self.line_dropped));
        }
        self.line.clear();
        self.line_dropped = 0;
    }

    fn finish(mut self) -> Vec<String> {
        self.line_dropped += self.dropped;
        self.end_line();
        self.lines
    }
}

/// The WASI functions [`wasi`] implements.
const DEFINED_WASI: &[&str] = &[
    "fd_write",
    "clock_time_get",
    "random_get",
    "environ_sizes_get",
    "environ_get",
    "args_sizes_get",
    "args_get",
    "proc_exit",
    "sched_yield",
    "fd_prestat_get",
];

/// Defines every other WASI function `module` imports as returning ENOSYS (as Envoy's host
/// does), so plugins built with a full standard library still load.
pub(crate) fn stub_other_wasi_imports(
    linker: &mut Linker<HostState>,
    module: &Module,
) -> Result<()> {
    for import in module.imports() {
        if import.module() != WASI {
            continue;
        }
        if DEFINED_WASI.contains(&import.name()) {
            continue;
        }
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        let returns_errno = ty.results().len() == 1;
        linker.func_new(WASI, import.name(), ty, move |_, _, results| {
            if returns_errno && let Some(r) = results.first_mut() {
                *r = Val::I32(WASI_ENOSYS);
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `fd_write`.
pub(super) fn fd_write(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         written_out: i32|
         -> Result<i32> {
            if fd != 1 && fd != 2 {
                return Ok(WASI_EBADF);
            }
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            if !(0..=MAX_IOVS).contains(&iovs_len) {
                return Ok(WASI_EINVAL);
            }
            let limits = &caller.data().plugin.limits;
            let mut lines = LineSplitter::new(limits.max_log_line_bytes, limits.max_fd_write_bytes);
            let mut written: u32 = 0;
            for i in 0..iovs_len {
                let Ok(iov) = mem.read(&caller, iovs.wrapping_add(i * 8), 8) else {
                    return Ok(WASI_EFAULT);
                };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                // Read in place: at most one line (bounded) is held by the host.
                if mem
                    .with_slice(&caller, ptr, len, |bytes| lines.push(bytes))
                    .is_err()
                {
                    return Ok(WASI_EFAULT);
                }
                written = written.wrapping_add(len as u32);
            }
            let level = if fd == 1 {
                LogLevel::Info
            } else {
                LogLevel::Error
            };
            for line in lines.finish() {
                caller.data().plugin.log(level, &line);
            }
            if mem.write_u32(&mut caller, written_out, written).is_err() {
                return Ok(WASI_EFAULT);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    Ok(())
}

/// `clock_time_get`.
pub(super) fn clock_time_get(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, clock: i32, _precision: i64, out: i32| -> Result<i32> {
            let nanos = match clock {
                0 => caller
                    .data()
                    .plugin
                    .clock
                    .now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
                1..=3 => caller.data().started.elapsed().as_nanos() as u64,
                _ => return Ok(WASI_EINVAL),
            };
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            Ok(if mem.write_u64(&mut caller, out, nanos).is_ok() {
                WASI_ESUCCESS
            } else {
                WASI_EFAULT
            })
        },
    )?;
    Ok(())
}

/// `random_get`.
pub(super) fn random_get(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<i32> {
            // The length is checked before anything else; the bytes are written straight into
            // guest memory (nothing is allocated on the host), from the OS CSPRNG.
            if len as u32 as usize > caller.data().plugin.limits.max_random_bytes {
                return Ok(WASI_EINVAL);
            }
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            match mem.with_slice_mut(&mut caller, ptr, len, getrandom::fill) {
                Ok(Ok(())) => Ok(WASI_ESUCCESS),
                Ok(Err(_)) => Ok(WASI_EIO),
                Err(_) => Ok(WASI_EFAULT),
            }
        },
    )?;
    Ok(())
}

/// `environ_sizes_get`.
pub(super) fn environ_sizes_get(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, count_out: i32, size_out: i32| -> Result<i32> {
            let env = caller.data().plugin.env_block();
            let size: usize = env.iter().map(|e| e.len() + 1).sum();
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            if mem
                .write_u32(&mut caller, count_out, env.len() as u32)
                .is_err()
                || mem.write_u32(&mut caller, size_out, size as u32).is_err()
            {
                return Ok(WASI_EFAULT);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    Ok(())
}

/// `environ_get`.
pub(super) fn environ_get(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, ptrs: i32, buf: i32| -> Result<i32> {
            let env = caller.data().plugin.env_block();
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            let mut offset = buf;
            for (i, entry) in env.iter().enumerate() {
                let mut bytes = entry.as_bytes().to_vec();
                bytes.push(0);
                if mem
                    .write_u32(&mut caller, ptrs.wrapping_add(i as i32 * 4), offset as u32)
                    .is_err()
                    || mem.write(&mut caller, offset, &bytes).is_err()
                {
                    return Ok(WASI_EFAULT);
                }
                offset = offset.wrapping_add(bytes.len() as i32);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    Ok(())
}

/// `args_sizes_get`.
pub(super) fn args_sizes_get(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |mut caller: Caller<'_, HostState>, count_out: i32, size_out: i32| -> Result<i32> {
            let Ok(mem) = memory(&caller) else {
                return Ok(WASI_EFAULT);
            };
            if mem.write_u32(&mut caller, count_out, 0).is_err()
                || mem.write_u32(&mut caller, size_out, 0).is_err()
            {
                return Ok(WASI_EFAULT);
            }
            Ok(WASI_ESUCCESS)
        },
    )?;
    Ok(())
}

/// `args_get`.
pub(super) fn args_get(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |_: Caller<'_, HostState>, _: i32, _: i32| -> Result<i32> { Ok(WASI_ESUCCESS) },
    )?;
    Ok(())
}

/// `proc_exit`.
pub(super) fn proc_exit(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |_: Caller<'_, HostState>, code: i32| -> Result<()> {
            Err(wasmtime::Error::msg(format!(
                "plugin called proc_exit({code})"
            )))
        },
    )?;
    Ok(())
}

/// `sched_yield`.
pub(super) fn sched_yield(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(module, name, |_: Caller<'_, HostState>| -> Result<i32> {
        Ok(WASI_ESUCCESS)
    })?;
    Ok(())
}

/// `fd_prestat_get`.
pub(super) fn fd_prestat_get(
    linker: &mut Linker<HostState>,
    module: &'static str,
    name: &'static str,
) -> Result<()> {
    linker.func_wrap(
        module,
        name,
        |_: Caller<'_, HostState>, _: i32, _: i32| -> Result<i32> {
            // No preopened directories.
            Ok(WASI_EBADF)
        },
    )?;
    Ok(())
}
