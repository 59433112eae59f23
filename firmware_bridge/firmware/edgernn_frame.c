/* edgernn_frame.c - see edgernn_frame.h and PROTOCOL.md. */
#include "edgernn_frame.h"

#include <string.h>

uint16_t edgernn_crc16(uint16_t crc, const uint8_t *data, size_t n)
{
    uint8_t bit;
    while (n--) {
        crc ^= (uint16_t)((uint16_t)*data++ << 8);
        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

/* COBS-stuffs raw bytes straight into the output buffer as they are produced, so a
 * frame needs no second buffer. `code_pos` is the slot of the current block's code
 * byte; `full` is set when a 254-byte block just closed (its new slot may go unused:
 * canonical COBS ends a frame without an empty trailing block). */
typedef struct {
    uint8_t *out;
    size_t size;
    size_t pos;
    size_t code_pos;
    uint8_t code;
    uint8_t full;
    uint8_t overflow;
    uint16_t crc;
    uint32_t raw;
} writer_t;

static void w_begin(writer_t *w, uint8_t *out, size_t size)
{
    w->out = out;
    w->size = size;
    w->pos = 1;
    w->code_pos = 0;
    w->code = 1;
    w->full = 0;
    w->overflow = (uint8_t)(size < 2);
    w->crc = 0xFFFFu;
    w->raw = 0;
}

static void w_close_block(writer_t *w)
{
    w->out[w->code_pos] = w->code;
    w->code_pos = w->pos++;
    w->code = 1;
}

static void w_stuff(writer_t *w, uint8_t b)
{
    w->raw++;
    if (w->overflow || w->pos + 1 >= w->size) { /* keep room for a code byte and 0x00 */
        w->overflow = 1;
        return;
    }
    w->full = 0;
    if (b == 0) {
        w_close_block(w);
        return;
    }
    w->out[w->pos++] = b;
    if (++w->code == 0xFF) {
        w_close_block(w);
        w->full = 1;
    }
}

static void w_byte(writer_t *w, uint8_t b)
{
    w->crc = edgernn_crc16(w->crc, &b, 1);
    w_stuff(w, b);
}

static void w_u32(writer_t *w, uint32_t v)
{
    w_byte(w, (uint8_t)(v & 0xFFu));
    w_byte(w, (uint8_t)((v >> 8) & 0xFFu));
    w_byte(w, (uint8_t)((v >> 16) & 0xFFu));
    w_byte(w, (uint8_t)((v >> 24) & 0xFFu));
}

static void w_f32(writer_t *w, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits); /* IEEE-754 single on every target we support */
    w_u32(w, bits);
}

static void w_header(writer_t *w, uint8_t type, uint8_t channels, uint8_t samples,
                     uint32_t seq, uint32_t time_us)
{
    w_byte(w, (uint8_t)EDGERNN_PROTOCOL_VERSION);
    w_byte(w, type);
    w_byte(w, channels);
    w_byte(w, samples);
    w_u32(w, seq);
    w_u32(w, time_us);
}

static size_t w_end(writer_t *w)
{
    uint16_t crc = w->crc;
    w_stuff(w, (uint8_t)(crc & 0xFFu));
    w_stuff(w, (uint8_t)(crc >> 8));
    if (w->overflow || w->raw > EDGERNN_MAX_RAW) {
        return 0;
    }
    if (w->full) {
        w->pos--; /* the slot opened after the last full block stays unused */
    } else {
        w->out[w->code_pos] = w->code;
    }
    w->out[w->pos++] = 0x00;
    return w->pos;
}

size_t edgernn_encode_data(uint8_t *out, size_t out_size, uint32_t seq, uint32_t time_us,
                           uint8_t channels, uint8_t samples, const float *values)
{
    writer_t w;
    uint32_t i, n = (uint32_t)channels * (uint32_t)samples;
    if (out == 0 || values == 0 || channels == 0 || samples == 0) {
        return 0;
    }
    w_begin(&w, out, out_size);
    w_header(&w, (uint8_t)EDGERNN_TYPE_DATA, channels, samples, seq, time_us);
    for (i = 0; i < n && !w.overflow; i++) {
        w_f32(&w, values[i]);
    }
    return w_end(&w);
}

size_t edgernn_encode_hello(uint8_t *out, size_t out_size, uint32_t session, float rate_hz,
                            uint32_t dropped, uint32_t seq, uint32_t time_us, uint8_t channels,
                            const char *const *names)
{
    writer_t w;
    uint8_t c;
    if (out == 0 || names == 0 || channels == 0) {
        return 0;
    }
    w_begin(&w, out, out_size);
    w_header(&w, (uint8_t)EDGERNN_TYPE_HELLO, channels, 0, seq, time_us);
    w_u32(&w, session);
    w_f32(&w, rate_hz);
    w_u32(&w, dropped);
    for (c = 0; c < channels; c++) {
        const char *name = names[c] ? names[c] : "";
        size_t k, len = strlen(name);
        if (len > EDGERNN_MAX_NAME) {
            len = EDGERNN_MAX_NAME;
        }
        w_byte(&w, (uint8_t)len);
        for (k = 0; k < len; k++) {
            w_byte(&w, (uint8_t)name[k]);
        }
    }
    return w_end(&w);
}
