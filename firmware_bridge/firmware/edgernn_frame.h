/*
 * edgernn_frame.h - encoder for the edgernn serial wire protocol, version 1.
 *
 * Portable C99: no malloc, no static state, no floating-point maths; works on AVR
 * (8-bit, 16-bit int), ARM Cortex-M, ESP32, RP2040 and hosts. Frames are written
 * into a buffer the caller owns; the bytes returned go to the UART as they are.
 * Byte-identical to edgernn.firmware_bridge.protocol (the Python test suite checks).
 * See PROTOCOL.md for the format.
 */
#ifndef EDGERNN_FRAME_H
#define EDGERNN_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGERNN_PROTOCOL_VERSION 1u
#define EDGERNN_TYPE_DATA 1u
#define EDGERNN_TYPE_HELLO 2u
#define EDGERNN_HEADER_SIZE 12u
#define EDGERNN_CRC_SIZE 2u
#define EDGERNN_MAX_NAME 32u   /* bytes per channel name; longer names are cut */
#define EDGERNN_MAX_RAW 4096u  /* largest raw frame a receiver accepts */

/* Raw (unstuffed) size of a data frame, and the buffer size that always holds the
 * encoded frame of `raw` bytes: COBS adds one byte per 254, plus code and 0x00. */
#define EDGERNN_DATA_RAW_SIZE(channels, samples) \
    (EDGERNN_HEADER_SIZE + 4ul * (uint32_t)(channels) * (uint32_t)(samples) + EDGERNN_CRC_SIZE)
#define EDGERNN_WIRE_SIZE(raw) ((raw) + (raw) / 254u + 2u)

/* CRC-16/CCITT-FALSE (poly 0x1021); start with crc = 0xFFFF. "123456789" -> 0x29B1. */
uint16_t edgernn_crc16(uint16_t crc, const uint8_t *data, size_t n);

/* A data frame: `samples` samples of `channels` float32 values, sample-major
 * (values[s * channels + c]), the first with sequence number `seq` taken at device
 * time `time_us`. Returns the bytes written to `out` (frame + 0x00 delimiter), or 0
 * if the arguments are invalid or `out_size` is too small. */
size_t edgernn_encode_data(uint8_t *out, size_t out_size, uint32_t seq, uint32_t time_us,
                           uint8_t channels, uint8_t samples, const float *values);

/* A hello frame: sent at boot and about once a second. `session` must change on every
 * boot (e.g. a hardware random number), `dropped` counts samples this session lost
 * inside the device, `seq` is the sequence number the next data sample will carry.
 * Returns the bytes written, or 0 as above. */
size_t edgernn_encode_hello(uint8_t *out, size_t out_size, uint32_t session, float rate_hz,
                            uint32_t dropped, uint32_t seq, uint32_t time_us, uint8_t channels,
                            const char *const *names);

#ifdef __cplusplus
}
#endif

#endif /* EDGERNN_FRAME_H */
