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
//!
//! And what is freed is given back to the system after a spike ([`start_trimming`]).

use std::time::Duration;

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

/// How often [`start_trimming`]'s thread looks at the process's memory.
const TRIM_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Below this resident size nothing is worth looking into.
const TRIM_FLOOR: u64 = 64 << 20;

/// Resident memory that the heap holds free, past which it is given back.
const TRIM_SLACK: u64 = 32 << 20;

/// Gives freed heap memory back to the system after a spike, as a thread of its own.
///
/// glibc keeps what is freed inside its heaps for reuse and returns only a free stretch at a
/// heap's very top. After a burst of connections closes (each held ~22 KiB) the memory is
/// free but scattered among what stays in use, so the process would keep its peak size
/// until a restart: 8,000 idle connections closed left ~180 MiB resident. Every
/// `TRIM_CHECK_EVERY` this reads the resident size (`/proc/self/statm`); past `TRIM_FLOOR`
/// it asks glibc how much of it the heap holds in use (`mallinfo2`, which walks the free
/// lists, hence not on every look), and when `TRIM_SLACK` or more is resident but free it
/// calls `malloc_trim(0)`, which releases every free page in every heap. A no-op where the
/// allocator is not glibc's.
pub fn start_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::thread::Builder::new()
            .name("offload-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_CHECK_EVERY);
                    trim_if_worth_it();
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the memory trimming thread");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_if_worth_it() {
    let Some(resident) = resident_bytes() else {
        return;
    };
    if resident < TRIM_FLOOR {
        return;
    }
    // SAFETY: mallinfo2 only reads the allocator's statistics, under its own locks.
    let heap = unsafe { libc::mallinfo2() };
    let in_use = (heap.uordblks as u64).saturating_add(heap.hblkhd as u64);
    if resident.saturating_sub(in_use) < TRIM_SLACK {
        return;
    }
    // SAFETY: malloc_trim releases free pages under the allocator's own locks; nothing in
    // use moves.
    unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        before_mib = resident >> 20,
        after_mib = resident_bytes().unwrap_or(0) >> 20,
        "freed heap memory returned to the system"
    );
}

/// The process's resident size, from `/proc/self/statm` (its second field, in pages).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()?))
}

/// The size of a memory page, which `/proc` counts memory in.
#[cfg(target_os = "linux")]
pub(crate) fn page_size() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().filter(|&p| p > 0)
}
