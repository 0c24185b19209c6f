//! Process-wide memory tuning.
//!
//! Uploads move through the store in parts of `store.part_size` (8 MiB by default). glibc
//! serves such a buffer with mmap and unmaps it when freed, but after the first free it raises
//! its mmap threshold above that size, so later parts come from per-thread heaps that keep the
//! freed memory: in the 1 GiB upload benchmark peak RSS rose from ~47 MiB to ~78 MiB that way.
//! A fixed threshold keeps large buffers on mmap, so RSS follows the buffers actually alive.
//!
//! Fastbins are turned off too: glibc empties them (`malloc_consolidate`, a walk over every
//! bin) before each allocation of 1 KiB or more, and hyper allocates an 8 KiB read buffer per
//! request on each side of the proxy; that walk was ~1.5% of a pass-through request's CPU.
//! Small blocks are still served from the per-thread cache (tcache) first.

/// Buffers from this size on are always mmapped and returned to the system when freed.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Applies the tuning; call once at start-up. A no-op where the allocator is not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; glibc serialises it with the arenas'
    // own locks, so calling it with other threads running is sound.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_MXFAST, 0);
    }
}
