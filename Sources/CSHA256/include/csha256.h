#ifndef METATRAIN_CSHA256_H
#define METATRAIN_CSHA256_H
#include <stddef.h>
#include <stdint.h>

/// SHA-256's round constants (FIPS 180-4, 4.2.2), for this block function and the Swift one.
extern const uint32_t metatrain_sha256_k[64];

/// Whether this CPU has the SHA extensions (and SSSE3, SSE4.1) the block function uses.
int metatrain_sha256_hardware(void);

/// SHA-256 compression of `blocks` 64-byte blocks at `data` into `state` (8 words, FIPS
/// 180-4 order), with the SHA extensions. Only call it when metatrain_sha256_hardware().
void metatrain_sha256_blocks(uint32_t state[8], const uint8_t *data, size_t blocks);

#endif
