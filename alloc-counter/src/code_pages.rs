//! The executable's pages that only starting the server used, taken out of its resident
//! memory.
//!
//! A server runs a great deal of code once — parsing its arguments and configuration, the Rego
//! parser and compiler, CEL's parser, schema validation — and then only the decision path:
//! receiving, deciding, answering. The pages of code (and of constant data) it used once stay
//! mapped, and counted in its RSS, for as long as it runs (measured on `arbiter serve`: 13 of
//! the binary's 21 MiB of code resident after starting, 6 MiB of it used while checks are
//! served). Telling the kernel those pages are not needed (`MADV_DONTNEED`) unmaps them; what
//! runs afterwards maps its pages again from the page cache, as it did the first time (a minor
//! fault for each 64 KiB), and the rest stays out of the resident set. The file's pages stay
//! in the page cache, where the kernel reclaims them first when memory is short.
//!
//! Only mappings that hold nothing but the file's own pages are touched: read-only (code, or
//! constant data), private, and with no page of their own (`Anonymous: 0 kB` in
//! `/proc/self/smaps`). The relocated data (`.data.rel.ro`, read-only once relocated but every
//! page a private copy) and the writable data are never among them.

/// Unmap the resident pages of this executable's read-only mappings (its code and constant
/// data) from the process, to be mapped again as they are used. Returns the bytes advised: 0
/// where the operating system has no such advice.
pub fn release_executable_pages() -> std::io::Result<usize> {
    imp::release()
}

/// One mapping of `/proc/self/smaps`: its range, permissions, device and inode, and the two
/// of its fields this module reads (in KiB).
#[cfg(target_os = "linux")]
struct Mapping<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    dev: &'a str,
    inode: &'a str,
    rss_kib: Option<u64>,
    anonymous_kib: Option<u64>,
}

/// The mappings of `/proc/self/smaps`' text: a mapping's header starts with its range
/// (`start-end perms offset dev inode [path]`), its fields follow (`Rss:   12 kB`).
#[cfg(target_os = "linux")]
fn mappings(smaps: &str) -> Vec<Mapping<'_>> {
    let mut maps: Vec<Mapping<'_>> = Vec::new();
    for line in smaps.lines() {
        let mut f = line.split_ascii_whitespace();
        let first = f.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let (perms, _offset, dev, inode) = (f.next(), f.next(), f.next(), f.next());
            maps.push(Mapping {
                start,
                end,
                perms: perms.unwrap_or(""),
                dev: dev.unwrap_or(""),
                inode: inode.unwrap_or("0"),
                rss_kib: None,
                anonymous_kib: None,
            });
        } else if let Some(m) = maps.last_mut() {
            let kib = f.next().and_then(|v| v.parse().ok());
            match first {
                "Rss:" => m.rss_kib = kib,
                "Anonymous:" => m.anonymous_kib = kib,
                _ => {}
            }
        }
    }
    maps
}

/// The mappings of the file that holds this function which hold only that file's pages:
/// readable, not writable, private, and without a page of their own — from
/// `/proc/self/smaps`, each mapping's start and end.
#[cfg(target_os = "linux")]
pub(crate) fn file_only_mappings() -> std::io::Result<Vec<(usize, usize)>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let maps = mappings(&smaps);
    let here = file_only_mappings as fn() -> std::io::Result<Vec<(usize, usize)>> as usize;
    // The file is the one whose code holds this function (by device and inode, as the kernel
    // maps it: its path may have been replaced or removed since the start).
    let Some(own) = maps
        .iter()
        .find(|m| m.start <= here && here < m.end && m.inode != "0")
    else {
        return Ok(Vec::new());
    };
    Ok(maps
        .iter()
        .filter(|m| {
            m.dev == own.dev
                && m.inode == own.inode
                && matches!(m.perms, "r-xp" | "r--p")
                && m.anonymous_kib == Some(0)
        })
        .map(|m| (m.start, m.end))
        .collect())
}

#[cfg(target_os = "linux")]
mod imp {
    const MADV_DONTNEED: std::ffi::c_int = 4;

    unsafe extern "C" {
        fn madvise(
            addr: *mut std::ffi::c_void,
            len: usize,
            advice: std::ffi::c_int,
        ) -> std::ffi::c_int;
    }

    pub(super) fn release() -> std::io::Result<usize> {
        let mut advised = 0;
        for (start, end) in super::file_only_mappings()? {
            // SAFETY: the range is a whole mapping the kernel reported just now: part of this
            // executable, mapped private from its file, not writable, and holding no page of
            // its own (no private copy: every resident page is the file's, in the page cache).
            // Nothing in the process makes these mappings writable (the loader did so only for
            // the relocated data, before `main`, and those pages are private copies, which
            // excludes them). So `MADV_DONTNEED` loses nothing: it drops the page-table
            // entries, and the next use of any of it maps the same bytes from the file again.
            // Other threads may be running that code or reading those constants meanwhile; the
            // kernel orders the unmapping and their page faults.
            let r = unsafe { madvise(start as *mut std::ffi::c_void, end - start, MADV_DONTNEED) };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            advised += end - start;
        }
        Ok(advised)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn release() -> std::io::Result<usize> {
        Ok(0)
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    /// KiB resident of the mappings that start at `starts` (`/proc/self/smaps`).
    fn resident_kib(starts: &[usize]) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        super::mappings(&smaps)
            .iter()
            .filter(|m| starts.contains(&m.start))
            .map(|m| m.rss_kib.unwrap())
            .sum()
    }

    /// The mappings found are this test binary's code and constants, never its relocated or
    /// writable data; releasing them takes their pages out of the resident set, and the code
    /// keeps running (it maps again as it runs).
    #[test]
    fn executable_pages_leave_the_resident_set_and_come_back_as_used() {
        let found = super::file_only_mappings().unwrap();
        let starts: Vec<usize> = found.iter().map(|m| m.0).collect();
        let here = super::super::start as fn() as usize;
        assert!(found.iter().any(|m| m.0 <= here && here < m.1));
        // A static that is written, and one that holds a pointer (relocated at load): neither
        // is in a mapping found.
        static WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        static RELOCATED: &str = "relocated";
        WRITTEN.store(1, std::sync::atomic::Ordering::Relaxed);
        for data in [&raw const WRITTEN as usize, &raw const RELOCATED as usize] {
            assert!(
                !found.iter().any(|m| m.0 <= data && data < m.1),
                "{data:x} in {found:x?}"
            );
        }
        let before = resident_kib(&starts);
        let advised = super::release_executable_pages().unwrap();
        let after = resident_kib(&starts);
        // Every mapping found is advised whole. A test that panics meanwhile (with
        // RUST_BACKTRACE set) can add one: std's symbolizer maps the executable's file, a
        // mapping of its own pages too. So what is advised lies between what was found before
        // and what is found after.
        let size = |ms: &[(usize, usize)]| ms.iter().map(|m| m.1 - m.0).sum::<usize>();
        let found_after = super::file_only_mappings().unwrap();
        assert!(
            size(&found) <= advised && advised <= size(&found_after),
            "advised {advised} bytes; found {found:x?} before, {found_after:x?} after"
        );
        assert!(found.iter().all(|m| found_after.contains(m)));
        assert!(
            after < before,
            "resident before {before} KiB, after {after} KiB"
        );
        // What was released runs and reads again: the harness, the formatting, the constants.
        assert_eq!(format!("{}-{}", 6 * 7, RELOCATED), "42-relocated");
        assert!(resident_kib(&starts) > 0);
    }
}
