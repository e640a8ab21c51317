// glibc calls that the Glibc module does not import (they need _GNU_SOURCE
// or malloc.h): allocator tuning and anonymous shared-memory files.
#if defined(__linux__)
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sys/mman.h>
#include <fcntl.h>
#include <errno.h>
#if __has_include(<malloc.h>)
#include <malloc.h>
#define METATRAIN_HAS_MALLOPT 1
#endif
#endif

/// Sets glibc's mmap and trim thresholds; returns 0 where there is no mallopt.
static inline int metatrain_keep_large_buffers(int mmap_threshold, int trim_threshold) {
#ifdef METATRAIN_HAS_MALLOPT
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) && mallopt(M_TRIM_THRESHOLD, trim_threshold);
#else
    (void)mmap_threshold; (void)trim_threshold;
    return 0;
#endif
}

/// Reserves `len` bytes of disk for `fd` without changing its size (fallocate with
/// FALLOC_FL_KEEP_SIZE); 0, or the errno (ENOSPC: the disk has no room; EOPNOTSUPP: the
/// file system cannot reserve).
static inline int metatrain_reserve_disk(int fd, long long len) {
#if defined(__linux__)
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)len) == 0 ? 0 : errno;
#else
    (void)fd; (void)len; return EOPNOTSUPP;
#endif
}

/// An anonymous memory-backed file (closed on exec), or -1 with errno set.
/// Other processes of the same user open it as /proc/PID/fd/FD; it disappears
/// with the last descriptor or mapping, however its owner exits.
static inline int metatrain_memfd(const char *name) {
#if defined(__linux__)
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
#else
    (void)name;
    return -1;
#endif
}

/// Seals a memfd against shrinking (it may still grow), so that a process
/// that maps it can never fault on a page its owner cut off. 0 or -1.
static inline int metatrain_seal_shrink(int fd) {
#if defined(__linux__)
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL);
#else
    (void)fd;
    return -1;
#endif
}

/// Whether `fd` is a memfd sealed against shrinking (F_GET_SEALS fails on any
/// other kind of file: a FIFO, a device, a regular file).
static inline int metatrain_is_sealed_memfd(int fd) {
#if defined(__linux__)
    int seals = fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (seals & F_SEAL_SHRINK) && (seals & F_SEAL_SEAL);
#else
    (void)fd;
    return 0;
#endif
}

/// Flags to open a peer's file with: never block (a FIFO), never a terminal.
static inline int metatrain_open_peer_flags(void) { return O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY; }
