// glibc calls that the Glibc module does not import (they need _GNU_SOURCE
// or malloc.h): allocator tuning and anonymous shared-memory files.
#if defined(__linux__)
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sys/mman.h>
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

/// An anonymous memory-backed file (closed on exec), or -1 with errno set.
/// Other processes of the same user open it as /proc/PID/fd/FD; it disappears
/// with the last descriptor or mapping, however its owner exits.
static inline int metatrain_memfd(const char *name) {
#if defined(__linux__)
    return memfd_create(name, MFD_CLOEXEC);
#else
    (void)name;
    return -1;
#endif
}
