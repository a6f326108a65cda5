#ifndef WALSHIP_CRC32C_HW_H
#define WALSHIP_CRC32C_HW_H

#include <stddef.h>
#include <stdint.h>

/// 1 when this CPU has a CRC-32C instruction (SSE 4.2 on x86-64, the CRC extension on ARMv8), else 0.
int walship_crc32c_hw_available(void);

/// Runs the CRC-32C register `state` (already inverted, as the algorithm keeps it) over `length` bytes.
/// Only call it when walship_crc32c_hw_available() returned 1.
uint32_t walship_crc32c_hw_update(uint32_t state, const void *bytes, size_t length);

#endif
