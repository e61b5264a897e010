//! Disks that fail on demand, for the storage-fault tests: a small tmpfs that a filler file
//! fills up (a real `ENOSPC` from the kernel; needs root and `mount`), and an `LD_PRELOAD` shim,
//! compiled here with `cc`, that fails writes and syncs of the files under a path with the
//! errno the test chooses (`EIO`: no kernel file system can be told to return it on demand
//! without device-mapper, which a test machine need not have) while a trigger file exists.
//! Both are undone on drop: the filler removed, the tmpfs unmounted.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `EIO`.
pub const EIO: i32 = 5;
/// `ENOSPC`.
pub const ENOSPC: i32 = 28;

/// A tmpfs of a few MiB mounted on a temp dir, unmounted on drop.
#[derive(Debug)]
pub struct SmallDisk {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl SmallDisk {
    /// Mount a tmpfs of `mib` MiB; `Err` with `mount`'s complaint where mounting is not
    /// allowed (not root, no `CAP_SYS_ADMIN`).
    pub fn mount(mib: u32) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(SmallDisk { dir, mounted: true })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }

    /// Write a filler file until the file system is full; how many bytes it took.
    pub fn fill(&self) -> u64 {
        let mut file = std::fs::File::create(self.filler()).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Smaller pieces into the last partial pages.
        for size in [4096usize, 512, 1] {
            while file.write(&block[..size]).is_ok_and(|n| n > 0) {
                written += size as u64;
            }
        }
        written
    }

    /// Remove the filler.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            // Whoever used the disk (the server) is stopped by now: fixtures declared after
            // this one drop first. A lazy unmount is the fallback for a straggler.
            let ok = Command::new("umount")
                .arg(self.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(self.dir.path())
                    .status();
            }
            self.mounted = false;
        }
    }
}

const SHIM_SOURCE: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>
#include <fcntl.h>

/* While the file named by HALLMARK_FAULT_TRIGGER exists, writes and syncs of files whose
   path starts with HALLMARK_FAULT_PREFIX fail with errno HALLMARK_FAULT_ERRNO. */
static int faulty(int fd) {
    const char *trigger = getenv("HALLMARK_FAULT_TRIGGER");
    const char *prefix = getenv("HALLMARK_FAULT_PREFIX");
    if (trigger == NULL || prefix == NULL || access(trigger, F_OK) != 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    if (strncmp(path, prefix, strlen(prefix)) != 0) return 0;
    const char *e = getenv("HALLMARK_FAULT_ERRNO");
    errno = e ? atoi(e) : EIO;
    return 1;
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *b, size_t n) {
    REAL(write); if (faulty(fd)) return -1; return real(fd, b, n);
}
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
    REAL(pwrite); if (faulty(fd)) return -1; return real(fd, b, n, o);
}
ssize_t pwrite64(int fd, const void *b, size_t n, off64_t o) {
    REAL(pwrite64); if (faulty(fd)) return -1; return real(fd, b, n, o);
}
ssize_t writev(int fd, const struct iovec *v, int c) {
    REAL(writev); if (faulty(fd)) return -1; return real(fd, v, c);
}
int fsync(int fd) {
    REAL(fsync); if (faulty(fd)) return -1; return real(fd);
}
int fdatasync(int fd) {
    REAL(fdatasync); if (faulty(fd)) return -1; return real(fd);
}
int sync_file_range(int fd, off64_t o, off64_t n, unsigned int f) {
    REAL(sync_file_range); if (faulty(fd)) return -1; return real(fd, o, n, f);
}
int ftruncate(int fd, off_t len) {
    REAL(ftruncate); if (faulty(fd)) return -1; return real(fd, len);
}
int ftruncate64(int fd, off64_t len) {
    REAL(ftruncate64); if (faulty(fd)) return -1; return real(fd, len);
}
"#;

/// The `LD_PRELOAD` fault shim, built for this test, failing files under `prefix`.
#[derive(Debug)]
pub struct FaultShim {
    dir: tempfile::TempDir,
    library: PathBuf,
    prefix: PathBuf,
    errno: i32,
}

impl FaultShim {
    /// Compile the shim; it will fail writes to files under `prefix` with `errno`.
    pub fn build(prefix: &Path, errno: i32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("fault.c");
        std::fs::write(&source, SHIM_SOURCE).unwrap();
        let library = dir.path().join("libhallmark-fault.so");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .output()
            .expect("run cc (install build-essential)");
        assert!(
            out.status.success(),
            "cc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FaultShim {
            dir,
            library,
            prefix: prefix.to_owned(),
            errno,
        }
    }

    fn trigger(&self) -> PathBuf {
        self.dir.path().join("fail-now")
    }

    /// The environment a process needs to load the shim.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.library.display().to_string()),
            (
                "HALLMARK_FAULT_TRIGGER".into(),
                self.trigger().display().to_string(),
            ),
            (
                "HALLMARK_FAULT_PREFIX".into(),
                self.prefix.display().to_string(),
            ),
            ("HALLMARK_FAULT_ERRNO".into(), self.errno.to_string()),
        ]
    }

    /// From now on, every write and sync under the prefix fails.
    pub fn fail(&self) {
        std::fs::write(self.trigger(), b"").unwrap();
    }

    /// Writes work again.
    pub fn heal(&self) {
        let _ = std::fs::remove_file(self.trigger());
    }
}
