// The checksum guards every ship frame and journal record, so it runs over each WAL byte twice per hop.
// The CPU's own instruction does 8 bytes per step; the instruction is chosen at run time so one binary
// still runs on a CPU without it (the Swift table implementation takes over).
#include "crc32c_hw.h"
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>

int walship_crc32c_hw_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

__attribute__((target("sse4.2")))
uint32_t walship_crc32c_hw_update(uint32_t state, const void *bytes, size_t length) {
    const unsigned char *p = bytes;
    uint64_t crc = state;
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = _mm_crc32_u64(crc, word);
        p += 8;
        length -= 8;
    }
    uint32_t c = (uint32_t)crc;
    while (length > 0) {
        c = _mm_crc32_u8(c, *p);
        p++;
        length--;
    }
    return c;
}

#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#include <asm/hwcap.h>
#include <arm_acle.h>

int walship_crc32c_hw_available(void) {
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) ? 1 : 0;
}

__attribute__((target("+crc")))
uint32_t walship_crc32c_hw_update(uint32_t state, const void *bytes, size_t length) {
    const unsigned char *p = bytes;
    uint32_t c = state;
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __crc32cd(c, word);
        p += 8;
        length -= 8;
    }
    while (length > 0) {
        c = __crc32cb(c, *p);
        p++;
        length--;
    }
    return c;
}

#else

int walship_crc32c_hw_available(void) { return 0; }

uint32_t walship_crc32c_hw_update(uint32_t state, const void *bytes, size_t length) {
    (void)bytes;
    (void)length;
    return state;
}

#endif
