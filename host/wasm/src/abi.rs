//! Guest memory access: every guest pointer goes through [`GuestMemory`], which checks bounds
//! once, here. A bad pointer becomes `Status::InvalidMemoryAccess` for the guest, never a host
//! panic. The pure decoding (ranges, the header-map wire format) is in `codec`.

use wasmtime::{AsContext, AsContextMut, Memory, TypedFunc};

pub use crate::codec::{
    HeaderList, MemoryError, guest_range as range, valid_header_name, valid_header_value,
};

/// Checked access to a guest's linear memory.
#[derive(Clone, Copy)]
pub(crate) struct GuestMemory {
    memory: Memory,
}

impl GuestMemory {
    pub(crate) fn new(memory: Memory) -> GuestMemory {
        GuestMemory { memory }
    }

    /// Runs `f` on the guest's whole memory, in place (no copy); `f` checks its ranges with
    /// `range`.
    pub(crate) fn with_data<R>(&self, store: impl AsContext, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.memory.data(&store))
    }

    /// Copies `len` bytes at `ptr` out of the guest.
    pub(crate) fn read(
        &self,
        store: impl AsContext,
        ptr: i32,
        len: i32,
    ) -> Result<Vec<u8>, MemoryError> {
        let data = self.memory.data(&store);
        let r = range(ptr, len, data.len())?;
        Ok(data[r].to_vec())
    }

    /// Copies at most `max` of the `len` bytes at `ptr` (the whole range is checked): the bytes,
    /// and how many were left out. The host never copies more than `max`.
    pub(crate) fn read_prefix(
        &self,
        store: impl AsContext,
        ptr: i32,
        len: i32,
        max: usize,
    ) -> Result<(Vec<u8>, usize), MemoryError> {
        let data = self.memory.data(&store);
        let r = range(ptr, len, data.len())?;
        let total = r.len();
        let keep = total.min(max);
        Ok((data[r.start..r.start + keep].to_vec(), total - keep))
    }

    /// Calls `f` with the guest bytes at `ptr..ptr + len` (checked), without copying them.
    pub(crate) fn with_slice<R>(
        &self,
        store: impl AsContext,
        ptr: i32,
        len: i32,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, MemoryError> {
        let data = self.memory.data(&store);
        let r = range(ptr, len, data.len())?;
        Ok(f(&data[r]))
    }

    /// Calls `f` with the guest bytes at `ptr..ptr + len` (checked), writable in place.
    pub(crate) fn with_slice_mut<R>(
        &self,
        mut store: impl AsContextMut,
        ptr: i32,
        len: i32,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, MemoryError> {
        let data = self.memory.data_mut(&mut store);
        let r = range(ptr, len, data.len())?;
        Ok(f(&mut data[r]))
    }

    /// Writes `bytes` at `ptr`.
    pub(crate) fn write(
        &self,
        mut store: impl AsContextMut,
        ptr: i32,
        bytes: &[u8],
    ) -> Result<(), MemoryError> {
        let data = self.memory.data_mut(&mut store);
        let r = range(ptr, bytes.len() as i32, data.len())?;
        data[r].copy_from_slice(bytes);
        Ok(())
    }

    /// Writes a little-endian u32 at `ptr`.
    pub(crate) fn write_u32(
        &self,
        store: impl AsContextMut,
        ptr: i32,
        v: u32,
    ) -> Result<(), MemoryError> {
        self.write(store, ptr, &v.to_le_bytes())
    }

    /// Writes a little-endian u64 at `ptr`.
    pub(crate) fn write_u64(
        &self,
        store: impl AsContextMut,
        ptr: i32,
        v: u64,
    ) -> Result<(), MemoryError> {
        self.write(store, ptr, &v.to_le_bytes())
    }

    /// Allocates `bytes.len()` in the guest with its allocator, copies `bytes` there and
    /// stores the pointer and size at `ptr_out` / `len_out` (the spec's return convention).
    pub(crate) fn return_bytes<T>(
        &self,
        mut store: wasmtime::StoreContextMut<'_, T>,
        alloc: &TypedFunc<i32, i32>,
        bytes: &[u8],
        ptr_out: i32,
        len_out: i32,
    ) -> Result<(), ReturnError> {
        // Validate the out-pointers before allocating, so a bad pointer leaks nothing.
        let size = self.memory.data_size(&store);
        range(ptr_out, 4, size).map_err(|_| ReturnError::Memory)?;
        range(len_out, 4, size).map_err(|_| ReturnError::Memory)?;
        let ptr = if bytes.is_empty() {
            0
        } else {
            let p = alloc
                .call(&mut store, bytes.len() as i32)
                .map_err(ReturnError::Trap)?;
            if p == 0 {
                return Err(ReturnError::Memory);
            }
            self.write(&mut store, p, bytes)
                .map_err(|_| ReturnError::Memory)?;
            p
        };
        self.write_u32(&mut store, ptr_out, ptr as u32)
            .map_err(|_| ReturnError::Memory)?;
        self.write_u32(&mut store, len_out, bytes.len() as u32)
            .map_err(|_| ReturnError::Memory)?;
        Ok(())
    }
}

/// Why returning bytes to the guest failed.
pub(crate) enum ReturnError {
    /// Bad pointer, or the guest allocator returned null.
    Memory,
    /// The guest allocator trapped (or hit the deadline): propagate the trap.
    Trap(wasmtime::Error),
}
