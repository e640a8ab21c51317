// glibc's allocator tuning (mallopt), which the Glibc module does not import.
#if defined(__linux__) && __has_include(<malloc.h>)
#include <malloc.h>
#define METATRAIN_HAS_MALLOPT 1
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
